"""The train loop (training.loop) and its config (training.config), on tiny phantom cases."""

from __future__ import annotations

import dataclasses
import errno
import json
import threading

import numpy as np
import pytest
import torch

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.model.bundle import load_bundle, read_bundle_info
from napari_gitseg.model.factory import build_model
from napari_gitseg.phantom import make_phantom_case
from training.config import TrainConfig, load_config, preset
from training.ddp import state_digest
from training.loop import (
    CheckpointWriteError,
    TrainingCancelled,
    build_dataset,
    train,
)
from training.validation import validate

torch.set_num_threads(2)

# a config that learns foreground within ~100 steps at 96 px (Dice-heavy loss, no augmentation)
LEARN = {
    "epochs": 8,
    "batch_size": 4,
    "lr": 3e-3,
    "patience": 0,
    "augmentation": "none",
    "loss": {"bce": 0.3, "dice": 0.7},
    "max_steps_per_epoch": 12,
}


@pytest.fixture(scope="module")
def cases():
    """Three tiny phantom cases (24 slices, 96 x 96)."""
    return [make_phantom_case(0, case=c, n_slices=24, size=(96, 96)) for c in (1, 2, 3)]


def _tiny(**kw) -> TrainConfig:
    base = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 4}
    base.update(kw)
    return preset("quick", **base)


def _pooled_dice(model: torch.nn.Module, dataset) -> float:
    """Foreground Dice pooled over all pixels (an empty prediction scores 0, unlike the per-slice Dice)."""
    model.eval()
    inter = total = 0.0
    with torch.inference_mode():
        for i in range(len(dataset)):
            item = dataset[i]
            logits = model(item["image"][None])
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            pred = (logits[0] > 0).numpy()
            true = item["masks"].numpy() > 0.5
            inter += float((pred & true).sum())
            total += float(pred.sum() + true.sum())
    return 2 * inter / total if total else 1.0


# ---------------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def trained(cases, tmp_path_factory):
    """One small training run (cases 1-2), validated on case 1; its events and its untrained twin."""
    cfg = preset("quick", **LEARN)
    out = tmp_path_factory.mktemp("train") / "model"
    events: list = []
    result = train(cfg, cases[:2], cases[:1], out, on_event=events.append, command="pytest tiny run")
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg.model_config())  # the same initial weights the run started from
    val_ds = build_dataset(cases[:1], cfg, cfg.model_config(), what="validation")
    return cfg, result, events, untrained, val_ds


def test_training_improves_dice_over_the_untrained_model(trained):
    cfg, result, _events, untrained, val_ds = trained
    before = validate(untrained, val_ds, torch.device("cpu"), cfg.model_config().classes)["mean_dice"]
    assert result.best_dice > before + 0.3
    # and it learned organs, not just "nothing here": foreground overlap grows too
    assert _pooled_dice(result.model, val_ds) > _pooled_dice(untrained, val_ds) + 0.15


def test_the_best_epoch_is_the_saved_bundle(trained):
    cfg, result, events, _untrained, val_ds = trained
    dices = [h["val_dice"] for h in result.history]
    assert len(dices) == cfg.epochs
    best_epoch = int(np.argmax(dices)) + 1  # the first epoch reaching the maximum
    assert result.best_epoch == best_epoch
    model, bundle = load_bundle(result.best_path)
    assert bundle.metrics["epoch"] == best_epoch
    assert bundle.metrics["val_dice"] == pytest.approx(max(dices))
    # the weights on disk are the best epoch's: re-validating them gives its Dice
    again = validate(model, val_ds, torch.device("cpu"), bundle.config.classes)
    assert again["mean_dice"] == pytest.approx(max(dices), abs=1e-6)
    # the JSON says how it was made
    assert bundle.training["config"] == cfg.to_dict()
    assert bundle.training["command"] == "pytest tiny run"
    assert bundle.training["data"]["n_train_slices"] == 48
    assert bundle.training["data"]["n_val_slices"] == 24
    assert [h["epoch"] for h in bundle.training["history"]] == list(range(1, best_epoch + 1))
    # one Checkpoint per improving epoch, the last one the best
    improving = [i + 1 for i, d in enumerate(dices) if d > max(dices[:i], default=-1.0) + cfg.min_delta]
    assert [e.epoch for e in events if isinstance(e, ev.Checkpoint)] == improving
    assert not list(result.best_path.parent.glob("*.resume.pt"))  # removed when a run completes


def test_events_come_in_order(trained):
    cfg, result, events, *_ = trained
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Progress"
    assert kinds.count("Metrics") == cfg.epochs
    fractions = [e.fraction for e in events if isinstance(e, ev.Progress)]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == pytest.approx(1.0)
    for i, e in enumerate(events):
        if isinstance(e, ev.Checkpoint):
            assert isinstance(events[i - 1], ev.Metrics) and events[i - 1].epoch == e.epoch
    assert sum(isinstance(e, ev.Progress) for e in events) == result.steps


# ---------------------------------------------------------------------------------------- control
def test_early_stopping(cases, tmp_path):
    cfg = _tiny(epochs=6, patience=2, min_delta=1.0)  # no epoch can beat the first by 1.0
    result = train(cfg, cases[:1], cases[1:2], tmp_path / "m")
    assert result.stopped_early
    assert result.epochs_run == 3 and len(result.history) == 3
    assert result.best_epoch == 1
    assert read_bundle_info(result.best_path).metrics["epoch"] == 1


def test_resume_continues_where_it_stopped(cases, tmp_path):
    cfg = _tiny(epochs=3, max_steps_per_epoch=3)
    full = train(cfg, cases[:1], cases[1:2], tmp_path / "full")

    stop = threading.Event()

    def on_event(e):
        if isinstance(e, ev.Metrics) and e.epoch == 2:
            stop.set()

    with pytest.raises(TrainingCancelled) as info:
        train(cfg, cases[:1], cases[1:2], tmp_path / "part", on_event=on_event, cancel=stop)
    assert info.value.result.epochs_run == 2
    assert (tmp_path / "part.resume.pt").is_file()
    resumed_events: list = []
    resumed = train(cfg, cases[:1], cases[1:2], tmp_path / "part", on_event=resumed_events.append, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert {e.epoch for e in resumed_events if isinstance(e, ev.Progress)} == {3}  # only epoch 3 ran
    for a, b in zip(full.history, resumed.history):  # same weights, optimizer and random streams
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
    assert not (tmp_path / "part.resume.pt").exists()


def test_a_run_without_resume_state_writes_none_and_trains_the_same(cases, tmp_path):
    """``resume_state=False`` (a round, never resumed) skips the per-epoch ``STEM.resume.pt``; the
    weights and history are those of a run that writes it."""
    cfg = _tiny(epochs=2, max_steps_per_epoch=2)
    stop = threading.Event()

    def on_event(e):
        if isinstance(e, ev.Metrics) and e.epoch == 1:
            stop.set()

    with pytest.raises(TrainingCancelled):
        train(cfg, cases[:1], cases[1:2], tmp_path / "cut", on_event=on_event, cancel=stop, resume_state=False)
    assert not (tmp_path / "cut.resume.pt").exists()  # cancelled after an epoch: still no resume state
    with_state = train(cfg, cases[:1], cases[1:2], tmp_path / "a")
    without = train(cfg, cases[:1], cases[1:2], tmp_path / "b", resume_state=False)
    assert [h["val_dice"] for h in with_state.history] == [h["val_dice"] for h in without.history]
    a, b = _bundle_state(with_state.best_path), _bundle_state(without.best_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_is_seeded_whatever_the_global_random_state(cases, tmp_path):
    """A round fine-tunes from a bundle: with the same ``seed`` it gives the same weights whatever the
    process's random state before it (it seeded nothing when fine-tuning: dropout drew from the
    process's own seed, and repeated rounds on one real scan gave Dice 0.59-0.71)."""
    lite0 = {  # the default model's encoder: its stochastic depth draws from torch's global generator
        "arch": "Unet",
        "encoder": "timm-tf_efficientnet_lite0",
        "k": 3,
        "stride": 2,
        "arch_kwargs": {"decoder_channels": [16, 16, 8, 8, 8]},
    }
    first = _tiny(epochs=1, max_steps_per_epoch=1, model=lite0, size=[64, 64])
    start = train(first, cases[:1], cases[1:2], tmp_path / "start")
    cfg = first.replace(epochs=2, max_steps_per_epoch=2, init_from=str(start.best_path))
    weights = []
    for i, scramble in enumerate((1, 2)):
        torch.manual_seed(scramble)  # what ran before the round in this process
        torch.rand(scramble * 7)
        weights.append(_bundle_state(train(cfg, cases[:1], cases[1:2], tmp_path / f"tuned{i}").best_path))
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights(cases, tmp_path):
    cfg = _tiny(epochs=1, max_steps_per_epoch=3, augmentation={"base": "none", "hflip": 0.5, "rotate": 0.5})
    a = train(cfg, cases[:1], cases[1:2], tmp_path / "a")
    b = train(cfg, cases[:1], cases[1:2], tmp_path / "b")
    c = train(cfg.replace(seed=1), cases[:1], cases[1:2], tmp_path / "c")
    assert state_digest(a.model) == state_digest(b.model)  # bit-identical on the CPU
    assert state_digest(a.model) != state_digest(c.model)


class OnTheFly(torch.utils.data.Dataset):
    """A toy training set generated on the fly: a new random image (and its masks) on every access."""

    on_the_fly = True

    def __init__(self, n: int = 8, size: int = 96, k: int = 3):
        self.n, self.size, self.k, self.accesses = n, size, k, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.accesses += 1
        gen = torch.Generator().manual_seed(self.accesses)
        image = torch.rand(self.k, self.size, self.size, generator=gen)
        masks = (image[:1] > 0.8).float().repeat(3, 1, 1)
        return {
            "image": image,
            "masks": masks,
            "ignore": torch.zeros(3, dtype=torch.bool),
            "weight": torch.tensor(1.0),
            "slice": i,
            "name": "toy",
        }


def test_a_dataset_made_on_the_fly_is_never_cached(cases, tmp_path):
    from training.train_data import Cached

    toy = OnTheFly()
    assert not torch.equal(toy[0]["image"], toy[0]["image"])
    assert Cached(toy, cache=True).cache is None and Cached(cases, cache=True).cache == {}
    toy.accesses = 0
    result = train(_tiny(epochs=2, max_steps_per_epoch=2), toy, cases[:1], tmp_path / "fly")
    assert result.steps == 4 and result.best_path is not None
    # every batch reached the dataset: 2 epochs x 2 steps x 4 items, plus one item read at set-up
    assert toy.accesses == 2 * 2 * 4 + 1


def test_the_resume_state_is_written_when_due_or_cancelled(cases, tmp_path, monkeypatch):
    """``STEM.resume.pt`` after an epoch only once ``resume_every_s`` have passed since the last one (a
    few-label fine-tune runs one-step epochs: writing it after each took a quarter of the run), and
    always after the epoch during which a cancel arrived, so ``--resume`` continues from there."""
    import training.checkpoints as checkpoints

    written: list[int] = []
    real_save = checkpoints.save_resume_state
    monkeypatch.setattr(checkpoints, "save_resume_state", lambda run: (written.append(run.epoch), real_save(run)))
    cfg = _tiny(epochs=3, max_steps_per_epoch=1)
    train(cfg, cases[:1], cases[1:2], tmp_path / "every", resume_every_s=0)
    assert written == [1, 2, 3]
    written.clear()
    train(cfg, cases[:1], cases[1:2], tmp_path / "never", resume_every_s=3600)
    assert written == []
    stop = threading.Event()
    with pytest.raises(TrainingCancelled):
        train(
            cfg,
            cases[:1],
            cases[1:2],
            tmp_path / "cut",
            on_event=lambda e: isinstance(e, ev.Metrics) and e.epoch == 2 and stop.set(),
            cancel=stop,
            resume_every_s=3600,
        )
    assert written == [2] and torch.load(tmp_path / "cut.resume.pt", weights_only=True)["epoch"] == 2


def test_resume_state_loads_weights_only(cases, tmp_path):
    stop = threading.Event()
    cfg = _tiny(epochs=3)
    with pytest.raises(TrainingCancelled):
        train(
            cfg,
            cases[:1],
            cases[1:2],
            tmp_path / "m",
            on_event=lambda e: isinstance(e, ev.Metrics) and stop.set(),
            cancel=stop,
        )
    state = torch.load(tmp_path / "m.resume.pt", weights_only=True)  # no pickled code inside
    assert state["epoch"] == 1
    other = _tiny(
        epochs=3,
        model={
            "arch": "Unet",
            "encoder": "resnet18",
            "k": 5,
            "stride": 1,
            "arch_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
        },
    )
    with pytest.raises(GitsegInputError, match="different model config"):
        train(other, cases[:1], cases[1:2], tmp_path / "m", resume=True)


def test_cancel_stops_at_the_next_step_and_keeps_the_best_bundle(cases, tmp_path):
    cfg = _tiny(epochs=3, max_steps_per_epoch=3)
    cancel = threading.Event()
    events: list = []

    def on_event(e):
        events.append(e)
        if isinstance(e, ev.Progress) and e.epoch == 2 and e.step == 1:
            cancel.set()

    with pytest.raises(TrainingCancelled) as info:
        train(cfg, cases[:1], cases[1:2], tmp_path / "m", on_event=on_event, cancel=cancel)
    progress = [(e.epoch, e.step) for e in events if isinstance(e, ev.Progress)]
    assert progress[-1] == (2, 1)  # not one step more
    part = info.value.result
    assert part.cancelled and part.best_epoch == 1
    model, bundle = load_bundle(tmp_path / "m.json")
    assert bundle.metrics["epoch"] == 1
    # a callable works as well as an Event
    with pytest.raises(TrainingCancelled):
        train(cfg, cases[:1], cases[1:2], tmp_path / "n", cancel=lambda: True)
    assert not (tmp_path / "n.json").exists()


def test_disk_full_keeps_the_previous_best_bundle(cases, tmp_path, monkeypatch):
    cfg = _tiny(epochs=1)
    train(cfg, cases[:1], cases[1:2], tmp_path / "m")
    before = (tmp_path / "m.safetensors").read_bytes(), json.loads((tmp_path / "m.json").read_text())

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("training.checkpoints.save_bundle", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full") as info:
        train(_tiny(epochs=1, seed=1), cases[:1], cases[1:2], tmp_path / "m")
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "m.safetensors").read_bytes() == before[0]
    assert json.loads((tmp_path / "m.json").read_text()) == before[1]
    load_bundle(tmp_path / "m.json")  # still valid (checksum matches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no debris


# ---------------------------------------------------------------------------------------- bad input
def test_labels_whose_shape_does_not_match_the_stack(cases, tmp_path):
    bad = dataclasses.replace(cases[0])
    bad.masks = cases[0].masks[:, :, :90]  # (Stack checks at construction; labels can come from elsewhere)
    with pytest.raises(GitsegInputError, match=r"labels of stack case1_day0 have shape \(3, 24, 90, 96\)"):
        train(_tiny(), [bad], cases[1:2], tmp_path / "m")


def test_a_class_the_model_does_not_have(cases, tmp_path):
    bad = dataclasses.replace(cases[0])
    bad.classes = ("large_bowel", "small_bowel", "liver")
    with pytest.raises(GitsegInputError, match="class 'liver' of stack case1_day0 is not one of the model's"):
        train(_tiny(), [bad], cases[1:2], tmp_path / "m")


def test_zero_labelled_slices(cases, tmp_path):
    bad = dataclasses.replace(cases[0], labelled=np.zeros(24, bool))
    with pytest.raises(GitsegInputError, match="no labelled slice"):
        train(_tiny(), [bad], cases[1:2], tmp_path / "m")


def test_all_empty_labels(cases, tmp_path):
    bad = dataclasses.replace(cases[0], masks=np.zeros_like(cases[0].masks))
    with pytest.raises(GitsegInputError, match="all 24 labelled training slices have empty masks"):
        train(_tiny(), [bad], cases[1:2], tmp_path / "m")
    assert not (tmp_path / "m.json").exists()


def test_stacks_without_labels(cases, tmp_path):
    bad = dataclasses.replace(cases[0], masks=None)
    with pytest.raises(GitsegInputError, match="has no labels to train on"):
        train(_tiny(), [bad], None, tmp_path / "m")


def test_one_case_is_split_into_blocks_of_slices(cases, tmp_path):
    result = train(_tiny(epochs=1), cases[:1], None, tmp_path / "m")
    data = read_bundle_info(result.best_path).training["data"]
    assert data["n_train_slices"] + data["n_val_slices"] == 24
    assert 0 < data["n_val_slices"] < 12


# ---------------------------------------------------------------------------------------- config
def test_config_rejects_unknown_keys_naming_key_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"job\.json: unknown training config key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1}, source="job.json")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochs": 3, "batchsize": 4}))
    with pytest.raises(GitsegInputError, match="batchsize") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_config_round_trip_and_checks():
    cfg = preset("cpu", epochs=5, lr=1e-3)
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()
    json.dumps(cfg.to_dict())  # JSON-ready
    assert cfg.model_config().input_size == tuple(cfg.size)
    for bad in (
        {"optimizer": "sgd"},
        {"schedule": "step"},
        {"epochs": 0},
        {"lr": -1},
        {"val_fraction": 1.5},
        {"loss": {"hinge": 1}},
        {"model": {"arch": "Unet", "k": 2}},
    ):
        with pytest.raises(ValueError):
            TrainConfig.from_dict({**cfg.to_dict(), **bad})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_fine_tuning_keeps_the_models_own_input_size(cases, tmp_path):
    first = train(_tiny(size=[64, 64]), cases[:2], cases[:1], tmp_path / "first")
    assert read_bundle_info(first.best_path).config.input_size == (64, 64)
    events: list = []
    tuned = train(
        _tiny(size=[48, 48], init_from=str(first.best_path)),
        cases[:2],
        cases[:1],
        tmp_path / "tuned",
        on_event=events.append,
    )
    assert read_bundle_info(tuned.best_path).config.input_size == (64, 64)
    assert any(isinstance(e, ev.Log) and "model's input size [64, 64]" in e.text for e in events)


def _bundle_state(path) -> dict:
    model, _info = load_bundle(path)
    return model.state_dict()


def test_average_last_writes_the_mean_weights_of_the_last_epochs(cases, tmp_path, monkeypatch):
    import copy

    import training.checkpoints as checkpoints
    from training.ddp import unwrap

    seen: dict[int, dict] = {}
    real_save = checkpoints.save_resume_state

    def save_and_record(run):  # called once per epoch, after the epoch's weights are final
        seen[run.epoch] = copy.deepcopy(unwrap(run.net).state_dict())
        real_save(run)

    monkeypatch.setattr(checkpoints, "save_resume_state", save_and_record)
    cfg = _tiny(epochs=3, max_steps_per_epoch=2, average_last=2)
    result = train(cfg, cases[:1], cases[1:2], tmp_path / "avg", resume_every_s=0)  # the hook: every epoch
    assert sorted(seen) == [1, 2, 3]
    saved = _bundle_state(result.best_path)
    for key, value in saved.items():
        if value.is_floating_point():
            mean = (seen[2][key].double() + seen[3][key].double()) / 2
            assert torch.allclose(value.double(), mean, atol=1e-6), key
            if not torch.equal(seen[2][key], seen[3][key]):
                assert not torch.allclose(value, seen[3][key], atol=1e-9), key  # not just the last epoch
        else:
            assert torch.equal(value, seen[3][key]), key  # batch counters: the last epoch's
    info = read_bundle_info(result.best_path)
    assert info.training["averaged_epochs"] == [2, 3]
    model, _ = load_bundle(result.best_path)
    val_ds = build_dataset(cases[1:2], cfg, cfg.model_config(), what="validation")
    dice = validate(model, val_ds, torch.device("cpu"), cfg.model_config().classes)["mean_dice"]
    assert info.metrics["val_dice"] == pytest.approx(dice, abs=1e-6) and result.best_dice == pytest.approx(dice)


def test_an_interrupted_averaging_run_resumes_to_the_same_average(cases, tmp_path):
    cfg = _tiny(epochs=3, max_steps_per_epoch=2, average_last=2)
    full = train(cfg, cases[:1], cases[1:2], tmp_path / "full")
    stop = threading.Event()

    def on_event(e):
        if isinstance(e, ev.Metrics) and e.epoch == 2:  # epoch 2 (in the average) ends, then stop
            stop.set()

    with pytest.raises(TrainingCancelled):
        train(cfg, cases[:1], cases[1:2], tmp_path / "part", on_event=on_event, cancel=stop)
    resumed = train(cfg, cases[:1], cases[1:2], tmp_path / "part", resume=True)
    a, b = _bundle_state(full.best_path), _bundle_state(resumed.best_path)
    assert all(torch.allclose(a[k].double(), b[k].double(), atol=1e-7) for k in a)
    assert read_bundle_info(resumed.best_path).training["averaged_epochs"] == [2, 3]


def test_average_last_must_be_a_count():
    with pytest.raises(ValueError, match="average_last"):
        preset("quick", average_last=-1)


def test_keep_start_mixes_the_fine_tuned_weights_with_the_starting_ones(cases, tmp_path):
    start = train(_tiny(), cases[:1], cases[1:2], tmp_path / "start")
    tune = _tiny(init_from=str(start.best_path), max_steps_per_epoch=3)
    alone = train(tune, cases[1:2], cases[:1], tmp_path / "alone")
    mixed = train(tune.replace(keep_start=0.25), cases[1:2], cases[:1], tmp_path / "mixed")
    s, a, m = (_bundle_state(r.best_path) for r in (start, alone, mixed))
    changed = [k for k in s if s[k].is_floating_point() and not torch.equal(s[k], a[k])]
    assert changed  # the fine-tuning moved the weights, so the mix is not trivially the start
    for key in s:
        want = 0.75 * a[key].double() + 0.25 * s[key].double() if s[key].is_floating_point() else a[key].double()
        assert torch.allclose(m[key].double(), want, atol=1e-6), key
    info = read_bundle_info(mixed.best_path)
    assert info.training["kept_start"] == 0.25 and info.training["init_from"] == str(start.best_path)
    model, _ = load_bundle(mixed.best_path)
    val_ds = build_dataset(cases[:1], tune, tune.model_config(), what="validation")
    dice = validate(model, val_ds, torch.device("cpu"), tune.model_config().classes)["mean_dice"]
    assert info.metrics["val_dice"] == pytest.approx(dice, abs=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "half"])
def test_keep_start_must_be_a_share_below_one(bad):
    with pytest.raises(ValueError, match="keep_start"):
        preset("quick", keep_start=bad)


def test_fine_tuning_learns_from_slices_marked_empty(cases, tmp_path):
    """A model that knows the organs learns from empty slices where not to paint (training from scratch refuses)."""
    first = train(_tiny(), cases[:1], cases[1:2], tmp_path / "start")
    empty = [dataclasses.replace(c, masks=np.zeros_like(c.masks)) for c in cases[:2]]
    tuned = train(_tiny(init_from=str(first.best_path)), empty[:1], empty[1:2], tmp_path / "tuned")
    assert tuned.best_path is not None and tuned.steps > 0
    with pytest.raises(GitsegInputError, match="no organ to learn"):
        train(_tiny(), empty[:1], empty[1:2], tmp_path / "scratch")
