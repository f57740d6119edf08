"""``TrainConfig``: every setting of a training run, JSON-serialisable, with named presets.

``TrainConfig.from_dict`` rejects unknown keys (naming the key, and the file when the dict came
from one), so a typo in a job file or ``--config`` fails loudly instead of being ignored. The
config is written in full into every bundle's JSON, so a model says how it was trained.

Presets (``preset(name, **overrides)``):

* ``quick``: a small U-Net (MobileNetV3-small) at 96 px for 40 steps, for tests and the GUI demo;
  when it fine-tunes a model it follows the few-label recipe (``training.finetune``) cut to 40 steps;
* ``cpu`` (the default): one bootstrap round on ~100 labelled slices in at most ~5 minutes on two
  CPU cores (U-Net, MobileNetV3 encoder, slim decoder, 2.5D k=3 stride=2, letterboxed to 160 px);
* ``gpu``: a U-Net/ResNet-34 at 256 px, longer schedule, mixed precision.

``fit="resize"`` (default) letterboxes every slice to ``size`` and the model records ``input_size``
so the predictor does the same; ``fit="crop"`` keeps the pixel size (native resolution when
predicting). A run keeps the epoch with the best validation Dice, or with ``average_last = N`` the
mean weights of its last N epochs; ``keep_start = a`` mixes a fine-tuned result with the weights it
started from, ``(1 - a) * fine-tuned + a * start`` (WiSE-FT). Details and the measurements behind
these settings: ``docs/training-notes.md``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "TrainConfig", "load_config", "preset"]

_CPU_MODEL = {
    "arch": "Unet",
    "encoder": "tu-mobilenetv3_large_100",
    "k": 3,
    "stride": 2,
    "arch_kwargs": {"decoder_channels": [64, 32, 24, 16, 16]},
}


@dataclass
class TrainConfig:
    """Settings of one training run (see the module docstring for presets and sizes)."""

    model: dict = field(default_factory=lambda: copy.deepcopy(_CPU_MODEL))
    epochs: int = 12
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adam | adamw
    schedule: str = "cosine"  # cosine | plateau | none
    loss: Any = field(default_factory=lambda: {"bce": 0.5, "tversky": 0.5, "tversky_alpha": 0.7, "tversky_beta": 0.3})
    augmentation: Any = "default"
    synthesis: dict = field(default_factory=dict)  # training.synthesis.RenderOptions (images rendered from real masks)
    # intensity normalisation of a fresh model (napari_gitseg.model.normalize; None: the default); a
    # fine-tuned model keeps its bundle's
    normalization: dict | None = None
    size: list | None = field(default_factory=lambda: [160, 160])
    fit: str = "resize"  # resize | crop
    crop_to_body: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 6  # epochs without improvement before stopping (0: never stop early)
    average_last: int = 0  # > 0: the bundle holds the mean weights of the run's last N epochs (0: the best epoch's)
    keep_start: float = 0.0  # fine-tuning: share of the starting bundle's weights mixed into the result (WiSE-FT)
    min_delta: float = 1e-4
    ignore_ambiguous: bool = False
    amp: bool = True  # mixed precision, used on CUDA only
    device: str | None = None  # None/auto: CUDA, then MPS, then CPU
    num_threads: int | None = 2  # CPU threads for torch (None: leave torch's default)
    max_steps_per_epoch: int | None = None
    init_from: str | None = None  # bundle to fine-tune from (the default for bootstrap rounds after the first)
    finetune_lr_factor: float = 0.5  # lr multiplier when fine-tuning from init_from
    finetune_epochs: int | None = None  # epochs when fine-tuning (None: ``epochs``)
    freeze_bn: bool = False  # when fine-tuning (init_from): keep BatchNorm statistics fixed (very few slices)
    pseudo_weight: float = 0.5  # loss weight of pseudo-labels (clinician labels weigh 1)
    pseudo_max_empty: float = 0.25  # at most this share of kept pseudo-labels may be empty slices
    val_batch_size: int = 16
    few_label_recipe: bool = True  # fine-tuning (init_from) with few labels follows training.finetune.RECIPE
    finetune_max_steps: int | None = None  # the recipe's steps capped at this (None: the recipe's own length)
    preset: str | None = "cpu"  # name of the preset this config started from (informational)

    # ---- validation -----------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values and types; ValueError naming the setting."""
        self._check_model()
        self._check_numbers()
        self._check_synthesis_and_normalization()
        self._check_choices()
        self._check_size()
        self._check_device_and_init()
        self._check_loss_and_augmentation()

    def _check_model(self) -> None:
        """The model config is an object ``ModelConfig`` accepts."""
        from napari_gitseg.model.factory import ModelConfig

        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a model config object, got {type(self.model).__name__}")
        try:
            ModelConfig.from_dict(self.model)
        except (ValueError, TypeError) as err:
            raise ValueError(f"model: {err}") from err

    def _check_numbers(self) -> None:
        """Counts are integers, rates and weights non-negative numbers, fractions in their ranges."""
        for name in ("epochs", "batch_size", "patience", "val_batch_size"):
            _check_int(name, getattr(self, name), 1 if name != "patience" else 0)
        for name in ("max_steps_per_epoch", "finetune_epochs", "num_threads", "finetune_max_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        _check_int("average_last", self.average_last, 0)
        for name in ("lr", "weight_decay", "min_delta", "pseudo_weight", "finetune_lr_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        if (
            isinstance(self.keep_start, bool)
            or not isinstance(self.keep_start, (int, float))
            or not 0.0 <= self.keep_start < 1.0
        ):
            raise ValueError(f"keep_start must be a number in [0, 1), got {self.keep_start!r}")
        self.keep_start = float(self.keep_start)
        if not 0.0 <= float(self.pseudo_max_empty) <= 1.0:
            raise ValueError(f"pseudo_max_empty must be in [0, 1], got {self.pseudo_max_empty!r}")

    def _check_synthesis_and_normalization(self) -> None:
        """The renderer options and the normalisation are ones their modules accept."""
        if not isinstance(self.synthesis, dict):
            raise ValueError(f"synthesis must be an object of renderer options, got {self.synthesis!r}")
        if self.synthesis:  # checked here so that a typo fails before a long run starts
            from training.synthesis import RenderOptions

            try:
                RenderOptions.from_dict(self.synthesis)
            except ValueError as err:
                raise ValueError(f"synthesis: {err}") from err
        if self.normalization is not None:
            from napari_gitseg.model.normalize import check_normalization

            try:
                check_normalization(self.normalization)
            except (ValueError, TypeError) as err:
                raise ValueError(f"normalization: {err}") from err

    def _check_choices(self) -> None:
        """Optimiser, schedule and fit are known names; switches are true or false."""
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "plateau", "none"):
            raise ValueError(f"schedule must be 'cosine', 'plateau' or 'none', got {self.schedule!r}")
        if self.fit not in ("resize", "crop"):
            raise ValueError(f"fit must be 'resize' or 'crop', got {self.fit!r}")
        for name in ("crop_to_body", "ignore_ambiguous", "amp", "freeze_bn", "few_label_recipe"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def _check_size(self) -> None:
        """``size`` is [height, width] of at least 32 (an integer means a square), or null with fit 'crop'."""
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            self.size = [self.size, self.size]
        if self.size is not None:
            if (
                not isinstance(self.size, (list, tuple))
                or len(self.size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in self.size)
            ):
                raise ValueError(f"size must be [height, width] (integers >= 32) or null, got {self.size!r}")
            self.size = [int(s) for s in self.size]
        elif self.fit == "resize":
            raise ValueError("size null (native resolution) needs fit 'crop'")

    def _check_device_and_init(self) -> None:
        """Device and starting bundle are strings when given."""
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a bundle path, got {self.init_from!r}")

    def _check_loss_and_augmentation(self) -> None:
        """The loss and the augmentation are specs their modules accept."""
        from training.augment import resolve_spec
        from training.losses import parse_loss_spec

        try:
            parse_loss_spec(self.loss)
        except ValueError as err:
            raise ValueError(f"loss: {err}") from err
        try:
            resolve_spec(self.augmentation)
        except ValueError as err:
            raise ValueError(f"augmentation: {err}") from err

    # ---- conversions ----------------------------------------------------------------------------
    def model_config(self):
        """The ``ModelConfig`` of the network to build (``input_size`` follows ``size`` and ``fit``)."""
        from napari_gitseg.model.factory import ModelConfig

        data = dict(self.model)
        if self.fit == "resize":
            data["input_size"] = list(self.size)
        else:
            data["input_size"] = None
        return ModelConfig.from_dict(data)

    def to_dict(self) -> dict:
        """JSON-ready dict of every setting."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict, source: str | os.PathLike | None = None) -> TrainConfig:
        """Build from a dict; ValueError naming unknown keys (and ``source``, the file they came from)."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ValueError(f"{where}a training config must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [key for key in data if key not in known]
        if unknown:
            raise ValueError(
                f"{where}unknown training config key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)} (known keys: {', '.join(known)})"
            )
        try:
            return cls(**copy.deepcopy(data))
        except ValueError as err:
            raise ValueError(f"{where}{err}") from err

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated; unknown keys rejected)."""
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)


PRESETS: dict[str, dict] = {
    "quick": {
        "model": {
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_100",
            "k": 3,
            "stride": 2,
            "arch_kwargs": {"decoder_channels": [64, 32, 16, 16, 8]},
        },
        "epochs": 4,
        "batch_size": 8,
        "lr": 5e-3,
        "size": [96, 96],
        "max_steps_per_epoch": 10,
        "patience": 0,
        "augmentation": {"base": "none", "hflip": 0.5},
        "finetune_max_steps": 40,  # fine-tuning a model: the few-label recipe, cut to 40 steps
        "preset": "quick",
    },
    "cpu": {"preset": "cpu"},
    "gpu": {
        "model": {"arch": "Unet", "encoder": "resnet34", "k": 3, "stride": 2, "arch_kwargs": {}},
        "epochs": 40,
        "batch_size": 32,
        "lr": 1e-3,
        "size": [256, 256],
        "patience": 10,
        "amp": True,
        "num_threads": None,
        "val_batch_size": 64,
        "preset": "gpu",
    },
}


def preset(name: str = "cpu", **overrides) -> TrainConfig:
    """The named preset (quick | cpu | gpu) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    data = TrainConfig(**copy.deepcopy(PRESETS[name])).to_dict()
    data.update(copy.deepcopy(overrides))
    return TrainConfig.from_dict(data)


def read_config_file(path: str | os.PathLike) -> dict:
    """The JSON object of a training-config file; GitsegInputError naming the file otherwise."""
    from napari_gitseg.io.errors import GitsegInputError

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise GitsegInputError(path, f"cannot read the training config ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GitsegInputError(path, f"the training config is not valid JSON ({err})") from err
    if not isinstance(doc, dict):
        raise GitsegInputError(path, "a training config must be a JSON object")
    return doc


def load_config(path: str | os.PathLike, base: str = "cpu") -> TrainConfig:
    """Read a JSON config file over the ``base`` preset; errors name the file."""
    from napari_gitseg.io.errors import GitsegInputError

    path = Path(path)
    doc = read_config_file(path)
    name = doc.get("preset") or base
    if name not in PRESETS:
        raise GitsegInputError(path, f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    data = TrainConfig(**copy.deepcopy(PRESETS[name])).to_dict()
    known = set(data)
    unknown = [key for key in doc if key not in known]
    if unknown:
        raise GitsegInputError(
            path, f"unknown training config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}"
        )
    data.update(doc)
    try:
        return TrainConfig.from_dict(data)
    except ValueError as err:
        raise GitsegInputError(path, str(err)) from err


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
