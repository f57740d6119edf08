"""Model bundles: round trip, strict validation, refusal of pickles, atomic writes; the registry."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_gitseg.model import bundle as bundle_mod
from napari_gitseg.model.bundle import (
    BUNDLE_FORMAT_VERSION,
    BundleError,
    load_bundle,
    read_bundle_info,
    save_bundle,
)
from napari_gitseg.model.factory import ModelConfig, build_model, forward_logits
from napari_gitseg.model.registry import ModelRegistry, RegistryError

torch.set_num_threads(min(2, torch.get_num_threads()))

CFG = ModelConfig(
    arch="Unet",
    encoder="tu-test_byobnet",
    k=3,
    stride=2,
    cls_head=True,
    arch_kwargs={"decoder_channels": [32, 16, 16, 8, 8]},
)


def _model(seed: int = 0, config: ModelConfig = CFG):
    torch.manual_seed(seed)
    model = build_model(config)
    # non-trivial BatchNorm statistics, so that a dropped buffer would show
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
    return model


@pytest.fixture
def saved(tmp_path):
    model = _model()
    bundle = save_bundle(model, CFG, tmp_path / "m", metrics={"dice": 0.8}, training={"data": "phantom"}, notes="test")
    return model, bundle


def _rewrite_tensors(bundle, state):
    """Replace the tensor file and fix its checksum, so only the tensors themselves are wrong."""
    save_file(state, str(bundle.weights_path))
    doc = json.loads(bundle.json_path.read_text())
    doc["sha256"] = hashlib.sha256(bundle.weights_path.read_bytes()).hexdigest()
    bundle.json_path.write_text(json.dumps(doc))


def test_round_trip_gives_identical_outputs(saved, tmp_path):
    model, bundle = saved
    assert bundle.json_path.is_file() and bundle.weights_path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    doc = json.loads(bundle.json_path.read_text())
    assert doc["format_version"] == BUNDLE_FORMAT_VERSION
    assert doc["metrics"] == {"dice": 0.8} and doc["notes"] == "test" and doc["training"] == {"data": "phantom"}
    assert doc["normalization"]["method"] == "percentile"
    assert doc["sha256"] == hashlib.sha256(bundle.weights_path.read_bytes()).hexdigest()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        want = forward_logits(model.eval(), x)
    for path in (bundle.json_path, bundle.weights_path, tmp_path / "m"):
        loaded, info = load_bundle(path)
        assert info.config == CFG and info.name == "m" and info.metrics == {"dice": 0.8}
        with torch.inference_mode():
            got = forward_logits(loaded, x)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_summary_names_the_network_input_date_dice_and_notes(tmp_path):
    long_note = "trained on rendered slices; " * 20
    bundle = save_bundle(_model(), CFG, tmp_path / "v0007", metrics={"val_dice": 0.8123}, notes=long_note)
    lines = bundle.summary().splitlines()
    assert lines[0] == "v0007: Unet with tu-test_byobnet, 3 slices in (2.5D, stride 2), native resolution"
    assert lines[1] == "organs: large bowel, small bowel, stomach"
    assert lines[2] == f"created {bundle.created[:10]}; Dice 0.812 on its validation slices"
    assert lines[3].startswith("trained on rendered slices;") and lines[3].endswith("...") and len(lines[3]) <= 160
    plain = save_bundle(_model(), CFG, tmp_path / "plain", metrics={"val_dice": "n/a"})  # no number, no notes
    assert plain.summary().splitlines()[2] == f"created {plain.created[:10]}" and len(plain.summary().splitlines()) == 3
    real = save_bundle(
        _model(), CFG, tmp_path / "real", training={"data": {"real_image_patients": ["case6", "case16"]}}
    )
    assert real.summary().splitlines()[3] == "learnt from real scans of 2 patients (case6, case16)"


def test_tensor_mismatches_are_refused(saved):
    _, bundle = saved
    good = load_file(str(bundle.weights_path))
    key = next(k for k, v in good.items() if v.ndim == 4)

    _rewrite_tensors(bundle, {**good, "extra.weight": torch.zeros(2)})
    with pytest.raises(BundleError, match=r"m\.safetensors.*unexpected"):
        load_bundle(bundle.json_path)

    _rewrite_tensors(bundle, {k: v for k, v in good.items() if k != key})
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle.json_path)

    _rewrite_tensors(bundle, {**good, key: torch.zeros(*good[key].shape[:-1], good[key].shape[-1] + 1)})
    with pytest.raises(BundleError, match="wrong shape"):
        load_bundle(bundle.json_path)

    _rewrite_tensors(bundle, good)
    load_bundle(bundle.json_path)  # restored: loads again


def test_checksum_mismatch_is_refused(saved):
    _, bundle = saved
    data = bytearray(bundle.weights_path.read_bytes())
    data[-1] ^= 0xFF
    bundle.weights_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum") as err:
        load_bundle(bundle.json_path)
    assert str(bundle.weights_path) in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": BUNDLE_FORMAT_VERSION + 1}, "newer napari-gitseg"),
        ({"format_version": "1"}, "format_version"),
        ({"surprise": 1}, "unknown keys"),
        ({"format": "something-else"}, "not a napari-gitseg model"),
        ({"config": {"arch": "Unet"}}, "invalid model config"),
        ({"config": {"arch": "NoNet", "encoder": "resnet18", "k": 3, "stride": 1}}, "unknown architecture"),
        ({"classes": ["a", "b", "c"]}, "classes"),
        ({"metrics": [1, 2]}, "metrics"),
        ({"sha256": "abc"}, "sha256"),
        ({"weights": "../other.safetensors"}, "same stem"),
    ],
)
def test_bad_json_is_refused(saved, change, message):
    _, bundle = saved
    doc = json.loads(bundle.json_path.read_text())
    doc.update(change)
    bundle.json_path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(bundle.json_path)
    assert "m.json" in str(err.value)


def test_missing_key_and_broken_json_are_refused(saved):
    _, bundle = saved
    doc = json.loads(bundle.json_path.read_text())
    del doc["sha256"]
    bundle.json_path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="missing keys"):
        read_bundle_info(bundle.json_path)
    bundle.json_path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle_info(bundle.json_path)
    bundle.json_path.unlink()
    with pytest.raises(BundleError, match="no JSON description"):
        load_bundle(bundle.weights_path)


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickled_checkpoints_are_refused_and_never_run(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    with pytest.raises(BundleError, match="pickled checkpoints are refused") as err:
        load_bundle(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()
    assert isinstance(err.value, ValueError)


def test_pickle_disguised_as_safetensors_is_not_executed(saved, tmp_path):
    _, bundle = saved
    marker = tmp_path / "pwned"
    bundle.weights_path.write_bytes(pickle.dumps(_Evil(marker)))
    doc = json.loads(bundle.json_path.read_text())
    doc["sha256"] = hashlib.sha256(bundle.weights_path.read_bytes()).hexdigest()
    bundle.json_path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="not a readable safetensors"):
        load_bundle(bundle.json_path)
    assert not marker.exists()
    # and torch's own safe loader refuses it too (what the encoder-weights path uses)
    with pytest.raises(Exception):  # noqa: B017
        torch.load(bundle.weights_path, weights_only=True)
    assert not marker.exists()


def test_model_must_match_its_config(tmp_path):
    other = ModelConfig(arch="FPN", encoder="tu-test_byobnet", k=3)
    with pytest.raises(BundleError, match="does not match its config"):
        save_bundle(_model(), other, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_crash_before_json_leaves_no_json(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "atomic_write_bytes", crash)
    with pytest.raises(OSError):
        save_bundle(_model(), CFG, tmp_path / "m")
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "m.json")


def test_overwriting_a_bundle_never_leaves_a_stale_json(tmp_path, monkeypatch):
    save_bundle(_model(0), CFG, tmp_path / "m")
    real = bundle_mod.atomic_write_bytes

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(bundle_mod, "atomic_write_bytes", crash)
    with pytest.raises(OSError):
        save_bundle(_model(1), CFG, tmp_path / "m")
    # the new tensors are in place but the old JSON (whose checksum no longer matches) is gone
    assert not (tmp_path / "m.json").exists()
    monkeypatch.setattr(bundle_mod, "atomic_write_bytes", real)
    save_bundle(_model(1), CFG, tmp_path / "m")
    load_bundle(tmp_path / "m.json")


# ---- registry ------------------------------------------------------------------------------------
def test_registry_add_activate_rollback(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions() == [] and reg.active() is None
    with pytest.raises(RegistryError, match="no active"):
        reg.load()
    v1 = reg.add(_model(1), CFG, metrics={"dice": 0.5}, activate=True)
    v2 = reg.add(_model(2), CFG, metrics={"dice": 0.7}, notes="round 2")
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.active() == "v0001"
    info = reg.versions()
    assert [v["version"] for v in info] == ["v0001", "v0002"]
    assert info[1]["parent"] == "v0001" and info[1]["metrics"] == {"dice": 0.7} and info[1]["notes"] == "round 2"
    reg.activate(v2)
    assert reg.active() == "v0002"
    _, bundle = reg.load()
    assert bundle.name == "v0002" and bundle.metrics == {"dice": 0.7}
    assert reg.path_of(1) == tmp_path / "models" / "v0001.json"
    assert reg.rollback() == "v0001"
    assert ModelRegistry(tmp_path / "models").active() == "v0001"  # persisted
    with pytest.raises(RegistryError, match="roll back"):
        reg.rollback()
    with pytest.raises(RegistryError, match="v0009"):
        reg.activate("v0009")
    with pytest.raises(RegistryError):
        reg.path_of("latest")


def test_registry_ignores_crash_leftovers(tmp_path):
    folder = tmp_path / "models"
    reg = ModelRegistry(folder)
    reg.add(_model(1), CFG, activate=True)
    # a crash left temp files and a complete bundle that registry.json never listed
    (folder / ".v0002.safetensors.abc.tmp").write_bytes(b"half")
    (folder / ".registry.json.xyz.tmp").write_text("{")
    save_bundle(_model(2), CFG, folder / "v0002")
    assert [v["version"] for v in reg.versions()] == ["v0001"]
    assert reg.active() == "v0001"
    with pytest.raises(RegistryError, match="no version v0002"):
        reg.activate("v0002")
    # the stray number is not reused: the next version is v0003
    assert reg.add(_model(3), CFG) == "v0003"
    _, bundle = reg.load("v0003")
    assert bundle.name == "v0003"


def test_registry_refuses_newer_or_broken_files(tmp_path):
    folder = tmp_path / "models"
    ModelRegistry(folder).add(_model(1), CFG, activate=True)
    doc = json.loads((folder / "registry.json").read_text())
    doc["format_version"] = 99
    (folder / "registry.json").write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="newer napari-gitseg") as err:
        ModelRegistry(folder)
    assert "registry.json" in str(err.value)
    (folder / "registry.json").write_text("[")
    with pytest.raises(RegistryError, match="unreadable"):
        ModelRegistry(folder)


def test_registry_writers_do_not_lose_versions(tmp_path):
    folder = tmp_path / "models"
    ModelRegistry(folder)
    model = _model(1)
    errors = []

    def writer():
        try:
            reg = ModelRegistry(folder)
            for _ in range(2):
                reg.add(model, CFG)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = [v["version"] for v in ModelRegistry(folder).versions()]
    assert sorted(names) == [f"v{i:04d}" for i in range(1, 7)]


def test_metrics_with_numpy_values_and_nan_are_stored_as_json(tmp_path):
    import numpy as np

    bundle = save_bundle(
        _model(),
        CFG,
        tmp_path / "m",
        metrics={"dice": np.float32(0.5), "hd": float("nan"), "per_slice": np.array([1.0, np.inf])},
        training={"folder": tmp_path},
    )
    doc = json.loads(bundle.json_path.read_text())
    assert doc["metrics"] == {"dice": 0.5, "hd": None, "per_slice": [1.0, None]}
    assert doc["training"] == {"folder": str(tmp_path)}
    with pytest.raises(BundleError, match="metrics.bad"):
        save_bundle(_model(), CFG, tmp_path / "n", metrics={"bad": object()})


def test_mirrored_test_time_augmentation_is_refused_for_a_model_that_learnt_sides():
    import dataclasses

    from napari_gitseg.model.bundle import read_bundle_info
    from napari_gitseg.predict import Predictor
    from napari_gitseg.resources import default_model_path

    shipped = read_bundle_info(default_model_path())  # trained with hflip 0: the stomach's side is learnt
    assert "left-right mirrored" in shipped.flip_refusal("h")

    def trained(augmentation):
        return dataclasses.replace(shipped, training={"config": {"augmentation": augmentation}})

    assert trained({"hflip": 0.5}).flip_refusal("h") is None
    assert trained({"hflip": {"p": 0.5}, "vflip": 0.0}).flip_refusal("h") is None
    assert "up-down" in trained({"hflip": {"p": 0.5}, "vflip": 0.0}).flip_refusal("hv")
    assert dataclasses.replace(shipped, training={}).flip_refusal("hv") is None  # nothing recorded: allowed
    with pytest.raises(BundleError, match="default.json.*left-right mirrored"):
        Predictor([default_model_path()], tta_flips=True)
    assert Predictor([default_model_path()]).flips == [()]  # without it the model loads
