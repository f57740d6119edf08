"""Model factory: every listed architecture builds and runs, configs round-trip, nothing is downloaded."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from napari_gitseg.classes import CLASSES
from napari_gitseg.model.factory import (
    ModelConfig,
    available_architectures,
    build_model,
    forward_logits,
    input_divisor,
    load_encoder_weights,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

ARCHS = ["Unet", "UnetPlusPlus", "FPN", "Linknet", "UPerNet", "Segformer", "DeepLabV3Plus"]
TINY = "tu-test_byobnet"  # timm's own tiny test network (0.3 M parameters)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network (HF hub, sockets) fails the test."""
    import huggingface_hub
    import segmentation_models_pytorch.encoders as smp_encoders

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_builds_and_keeps_the_input_size(arch):
    model = build_model(ModelConfig(arch=arch, encoder="resnet18", k=3, stride=1))
    assert not model.training
    with torch.inference_mode():
        seg, cls = forward_logits(model, torch.rand(1, 3, 64, 64))
    assert tuple(seg.shape) == (1, len(CLASSES), 64, 64)
    assert cls is None
    assert torch.isfinite(seg).all()


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus"])
def test_cls_head_gives_one_logit_per_class(arch):
    model = build_model(ModelConfig(arch=arch, encoder=TINY, k=5, stride=2, cls_head=True))
    with torch.inference_mode():
        seg, cls = forward_logits(model, torch.rand(2, 5, 64, 64))
    assert tuple(seg.shape) == (2, 3, 64, 64)
    assert tuple(cls.shape) == (2, 3)


@pytest.mark.parametrize("arch", ["Unet", "Segformer", "DeepLabV3Plus"])
def test_forward_logits_pads_odd_sizes_and_crops_back(arch):
    model = build_model(ModelConfig(arch=arch, encoder=TINY, k=1, stride=1))
    x = torch.rand(1, 1, 50, 71)
    with torch.inference_mode():
        seg, _ = forward_logits(model, x)
    assert tuple(seg.shape) == (1, 3, 50, 71)


def test_divisor_follows_the_encoder():
    assert input_divisor(build_model(ModelConfig(arch="Unet", encoder=TINY))) == 32
    assert input_divisor(build_model(ModelConfig(arch="DeepLabV3Plus", encoder=TINY))) == 16


def test_arch_names_come_from_smp_and_match_without_case():
    names = available_architectures()
    assert set(ARCHS) <= set(names)
    assert ModelConfig(arch="unetplusplus").arch == "UnetPlusPlus"
    with pytest.raises(ValueError, match="Unet.*FPN|FPN.*Unet") as err:
        ModelConfig(arch="UNetXL")
    assert "UNetXL" in str(err.value)


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="no_such_encoder"):
        build_model(ModelConfig(encoder="no_such_encoder"))
    with pytest.raises(ValueError, match="tu-no_such_timm_net"):
        build_model(ModelConfig(encoder="tu-no_such_timm_net"))


def test_config_round_trips_and_validates():
    cfg = ModelConfig(
        arch="fpn",
        encoder=TINY,
        k=5,
        stride=2,
        cls_head=True,
        input_size=(224, 192),
        arch_kwargs={"decoder_dropout": 0.1},
    )
    data = cfg.to_dict()
    assert data["arch"] == "FPN" and data["classes"] == list(CLASSES) and data["input_size"] == [224, 192]
    assert ModelConfig.from_dict(data) == cfg
    for bad in (
        {"k": 4},
        {"k": 0},
        {"stride": 0},
        {"classes": ()},
        {"classes": ("a", "a")},
        {"input_size": (0, 5)},
        {"cls_head": "yes"},
        {"k": 3.0},
    ):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**data, "surprise": 1})
    with pytest.raises(ValueError, match="lacks keys"):
        ModelConfig.from_dict({"arch": "Unet"})


def test_no_download_for_smp_and_timm_encoders():
    # the autouse fixture makes any hub download or socket connect raise
    for encoder in ("resnet18", "tu-resnet10t", "efficientnet-b0"):
        model = build_model(ModelConfig(encoder=encoder, k=3))
        assert sum(p.numel() for p in model.parameters()) > 0


def test_local_encoder_weights_load_strictly(tmp_path):
    from safetensors.torch import save_file

    cfg = ModelConfig(arch="Unet", encoder=TINY, k=3)
    torch.manual_seed(1)
    source = build_model(cfg)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(path))
    torch.manual_seed(2)
    target = build_model(cfg, encoder_weights_path=path)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(value, target.encoder.state_dict()[key]), key
    # the decoder stays random: only the encoder was loaded
    assert not torch.equal(
        source.decoder.state_dict()[next(iter(source.decoder.state_dict()))],
        target.decoder.state_dict()[next(iter(target.decoder.state_dict()))],
    )

    # a torch file (weights_only) with an "encoder." prefix works too
    torch_path = tmp_path / "enc.pth"
    torch.save({f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}, torch_path)
    build_model(cfg, encoder_weights_path=torch_path)

    # 3-channel weights into a k=5 model: the first convolution is adapted, the rest is exact
    wide = build_model(ModelConfig(arch="Unet", encoder=TINY, k=5), encoder_weights_path=path)
    first = [k for k, v in wide.encoder.state_dict().items() if v.ndim == 4][0]
    assert wide.encoder.state_dict()[first].shape[1] == 5

    bad = tmp_path / "bad.safetensors"
    state = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(bad))
    with pytest.raises(ValueError, match="bad.safetensors.*missing.*unexpected"):
        build_model(cfg, encoder_weights_path=bad)
    with pytest.raises(ValueError, match="not found"):
        load_encoder_weights(build_model(cfg), tmp_path / "absent.safetensors")


def test_models_are_deterministic_given_the_seed():
    cfg = ModelConfig(arch="Unet", encoder=TINY, k=3)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        with torch.inference_mode():
            outs.append(forward_logits(build_model(cfg), x)[0])
    assert torch.equal(outs[0], outs[1])
