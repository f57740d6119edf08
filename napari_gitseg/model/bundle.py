"""A model on disk: ``NAME.safetensors`` (the weights) + ``NAME.json`` (everything else).

The JSON holds the format version, the ``ModelConfig`` (architecture, encoder, 2.5D k and
stride, classes, input size), the intensity normalisation used in training, where the
training data came from and the command that ran, validation metrics, a creation time,
the SHA-256 of the tensor file and free-form notes.

Checkpoints are untrusted input. Weights are only ever read from safetensors (a plain
tensor format: reading one cannot run code); pickled checkpoints (``.pt``, ``.pth``,
``.ckpt`` ...) are refused without being opened. ``load_bundle`` checks the JSON's keys and
types, the format version, the checksum, and that the tensor names and shapes are exactly
those of the architecture the JSON describes. Any failure raises ``BundleError`` naming the
file.

Writes are atomic: the tensor file goes to a temporary name and is renamed into place
(``os.replace``) before the JSON is written the same way, so a JSON never points at a
missing or half-written tensor file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from napari_gitseg.model.factory import ModelConfig, build_model
from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BundleError",
    "ModelBundle",
    "bundle_paths",
    "load_bundle",
    "read_bundle_info",
    "save_bundle",
]

BUNDLE_FORMAT = "napari-gitseg-model"
BUNDLE_FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
_MAX_JSON_BYTES = 4 * 1024 * 1024

# key -> allowed JSON types
_SCHEMA: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "format_version": (int,),
    "name": (str,),
    "weights": (str,),
    "sha256": (str,),
    "config": (dict,),
    "classes": (list,),
    "input_size": (list, type(None)),
    "normalization": (dict,),
    "training": (dict,),
    "metrics": (dict,),
    "created": (str,),
    "notes": (str,),
    "software": (dict,),
}
_REQUIRED = ("format", "format_version", "weights", "sha256", "config", "classes", "normalization", "created")


class BundleError(ValueError):
    """A model bundle that cannot be saved or loaded; the message names the file."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@dataclass
class ModelBundle:
    """The metadata of a saved model (the JSON side); the weights live in ``weights_path``."""

    json_path: Path
    weights_path: Path
    config: ModelConfig
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str = ""
    sha256: str = ""
    notes: str = ""
    software: dict = field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT_VERSION

    @property
    def name(self) -> str:
        """The bundle's stem (``v0003``, ``default`` ...), used as its version label."""
        return self.json_path.stem

    @property
    def classes(self) -> tuple[str, ...]:
        """Output classes, in channel order."""
        return self.config.classes

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) the model was trained at, or None for native resolution."""
        return self.config.input_size

    def flip_refusal(self, flips: str) -> str | None:
        """Why mirrored test-time augmentation (``flips``: "h" left-right, "hv" also up-down) must not be used
        with this model, or None.

        A model never shown a mirrored image in training has learnt which side each organ lies on (the
        stomach on the patient's left); averaging in its prediction of the mirrored scan swaps that: the
        shipped model's stomach Dice fell from 0.85 to 0.40 on the TotalSegmentator MR volume. Only what the
        bundle records counts (``training.config.augmentation``); a bundle that records nothing is allowed.
        """
        config = self.training.get("config") if isinstance(self.training, dict) else None
        augmentation = config.get("augmentation") if isinstance(config, dict) else None
        if not isinstance(augmentation, dict):
            return None
        for axis, key, what in (("h", "hflip", "left-right"), ("v", "vflip", "up-down")):
            value = augmentation.get(key)
            p = value.get("p") if isinstance(value, dict) else value
            if axis in flips and isinstance(p, (int, float)) and p == 0:
                return (
                    f"{self.name} learnt without {what} mirrored images, so it knows which side each organ lies on; "
                    "mirrored test-time augmentation would swap that: predict without it"
                )
        return None

    def summary(self) -> str:
        """A few lines for a person choosing a model: name, network, input, date, validation Dice, notes."""
        c = self.config
        size = "native resolution" if self.input_size is None else "{}x{} px".format(*self.input_size)
        lines = [
            f"{self.name}: {c.arch} with {c.encoder}, {c.k} slices in (2.5D, stride {c.stride}), {size}",
            "organs: " + ", ".join(name.replace("_", " ") for name in self.classes),
        ]
        made = self.created[:10] if self.created else "date unknown"
        dice = self.metrics.get("val_dice")
        known = isinstance(dice, (int, float)) and not isinstance(dice, bool)
        lines.append(f"created {made}" + (f"; Dice {float(dice):.3f} on its validation slices" if known else ""))
        data = self.training.get("data") if isinstance(self.training, dict) else None
        real = data.get("real_image_patients") if isinstance(data, dict) else None
        if real:
            lines.append(f"learnt from real scans of {len(real)} patients ({', '.join(map(str, real))})")
        if self.notes:
            lines.append(self.notes if len(self.notes) <= 160 else self.notes[:157].rstrip() + "...")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The JSON document describing this bundle."""
        return {
            "format": BUNDLE_FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "weights": self.weights_path.name,
            "sha256": self.sha256,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "input_size": None if self.input_size is None else list(self.input_size),
            "normalization": self.normalization,
            "training": self.training,
            "metrics": self.metrics,
            "created": self.created,
            "notes": self.notes,
            "software": self.software,
        }


def bundle_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(json, safetensors) paths for a bundle given as ``.json``, ``.safetensors`` or the bare stem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise BundleError(
            path,
            "pickled checkpoints are refused (unpickling can run arbitrary code); "
            "save the model as a bundle (NAME.safetensors + NAME.json) with save_bundle",
        )
    if suffix in (".json", ".safetensors"):
        stem = path.with_suffix("")
    else:
        stem = path
    return stem.parent / (stem.name + ".json"), stem.parent / (stem.name + ".safetensors")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _plain(value, where: str):
    """JSON-ready copy: numpy scalars/arrays become Python values, NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _plain(value.tolist(), where)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where} has a value of type {type(value).__name__}, which JSON cannot hold")


def _json_safe(name: str, value: dict, path: Path) -> dict:
    try:
        return _plain(value, name)
    except TypeError as err:
        raise BundleError(path, f"{name} must be JSON-serialisable: {err}") from err


def _software() -> dict:
    out = {"torch": torch.__version__}
    try:
        import segmentation_models_pytorch as smp

        out["segmentation_models_pytorch"] = smp.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        from napari_gitseg import __version__

        out["napari_gitseg"] = __version__
    except Exception:  # noqa: BLE001
        pass
    return out


_SHAPES_BY_CONFIG: dict[str, dict[str, tuple[int, ...]]] = {}  # a training run saves one config many times


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the architecture ``config`` describes (built on the meta device once
    per config: building it costs more than writing a small checkpoint)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _SHAPES_BY_CONFIG:
        try:
            with torch.device("meta"):
                model = build_model(config, pretrained=False)
        except Exception:  # noqa: BLE001 - some encoders refuse meta tensors; build for real
            model = build_model(config, pretrained=False)
        _SHAPES_BY_CONFIG[key] = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return dict(_SHAPES_BY_CONFIG[key])


def save_bundle(
    model: torch.nn.Module,
    config: ModelConfig,
    path_stem: str | os.PathLike,
    *,
    normalization: dict | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
    notes: str = "",
    created: str | None = None,
) -> ModelBundle:
    """Write ``model``'s weights and metadata as ``STEM.safetensors`` + ``STEM.json`` atomically."""
    from safetensors.torch import save_file

    json_path, weights_path = bundle_paths(path_stem)
    if not isinstance(config, ModelConfig):
        raise BundleError(json_path, f"config must be a ModelConfig, got {type(config).__name__}")
    if not json_path.parent.is_dir():
        raise BundleError(json_path, "the folder does not exist")
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    expected = _expected_shapes(config)
    got = {key: tuple(value.shape) for key, value in state.items()}
    if got != expected:
        raise BundleError(json_path, "the model does not match its config: " + _describe_mismatch(expected, got))
    normalization = _json_safe(
        "normalization", dict(DEFAULT_NORMALIZATION if normalization is None else normalization), json_path
    )
    bundle = ModelBundle(
        json_path=json_path,
        weights_path=weights_path,
        config=config,
        normalization=normalization,
        training=_json_safe("training", dict(training or {}), json_path),
        metrics=_json_safe("metrics", dict(metrics or {}), json_path),
        created=created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        notes=str(notes),
        software=_software(),
    )
    # a JSON left over from an earlier bundle of the same name must never describe the new tensors
    json_path.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{weights_path.name}.", suffix=".tmp", dir=weights_path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": BUNDLE_FORMAT})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        bundle.sha256 = _sha256(Path(tmp))
        os.replace(tmp, weights_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_bytes(json_path, (json.dumps(bundle.to_json(), indent=2) + "\n").encode("utf-8"))
    return bundle


def _describe_mismatch(expected: dict, got: dict) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} unexpected tensors (e.g. {extra[:3]})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensors of the wrong shape (e.g. {k!r}: {tuple(got[k])}, expected {tuple(expected[k])})"
        )
    return "; ".join(parts) or "no difference"


def read_bundle_info(path: str | os.PathLike) -> ModelBundle:
    """Read and validate a bundle's JSON (keys, types, format version); the weights are not touched."""
    json_path, weights_path = bundle_paths(path)
    if not json_path.is_file():
        if weights_path.is_file():
            raise BundleError(json_path, f"missing: the weights {weights_path.name} have no JSON description")
        raise BundleError(json_path, "model bundle not found")
    if json_path.stat().st_size > _MAX_JSON_BYTES:
        raise BundleError(json_path, "too large for a model description")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(json_path, f"not valid JSON ({err})") from err
    if not isinstance(doc, dict):
        raise BundleError(json_path, "a model description must be a JSON object")
    if doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(json_path, f"not a napari-gitseg model description (format {doc.get('format')!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(json_path, f"invalid format_version {version!r}")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            json_path,
            f"written by a newer napari-gitseg (bundle format {version}, this version reads up to "
            f"{BUNDLE_FORMAT_VERSION}); update napari-gitseg",
        )
    unknown = sorted(set(doc) - set(_SCHEMA))
    if unknown:
        raise BundleError(json_path, f"unknown keys {unknown}")
    missing = [key for key in _REQUIRED if key not in doc]
    if missing:
        raise BundleError(json_path, f"missing keys {missing}")
    for key, types in _SCHEMA.items():
        if key in doc and (not isinstance(doc[key], types) or isinstance(doc[key], bool)):
            raise BundleError(
                json_path, f"key {key!r} has type {type(doc[key]).__name__}, expected {types[0].__name__}"
            )
    if doc["weights"] != weights_path.name:
        raise BundleError(json_path, f"weights file {doc['weights']!r} must be {weights_path.name!r} (same stem)")
    sha = doc["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError(json_path, "sha256 must be 64 lowercase hex digits")
    try:
        config = ModelConfig.from_dict(doc["config"])
    except (ValueError, TypeError) as err:
        raise BundleError(json_path, f"invalid model config: {err}") from err
    if list(config.classes) != doc["classes"]:
        raise BundleError(json_path, f"classes {doc['classes']} differ from the config's {list(config.classes)}")
    in_size = doc.get("input_size")
    if (None if in_size is None else tuple(in_size)) != config.input_size:
        raise BundleError(json_path, f"input_size {in_size} differs from the config's {config.input_size}")
    norm = doc["normalization"]
    if not isinstance(norm.get("method", "percentile"), str):
        raise BundleError(json_path, "normalization.method must be a string")
    return ModelBundle(
        json_path=json_path,
        weights_path=weights_path,
        config=config,
        normalization=norm,
        training=doc.get("training", {}),
        metrics=doc.get("metrics", {}),
        created=doc["created"],
        sha256=sha,
        notes=doc.get("notes", ""),
        software=doc.get("software", {}),
        format_version=version,
    )


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelBundle]:
    """Validate and load a bundle (``.json``, ``.safetensors`` or stem): (model in eval mode on ``device``, bundle)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    bundle = read_bundle_info(path)
    weights = bundle.weights_path
    if not weights.is_file():
        raise BundleError(weights, f"weights file missing (described by {bundle.json_path.name})")
    if _sha256(weights) != bundle.sha256:
        raise BundleError(weights, f"checksum mismatch: the file changed after {bundle.json_path.name} was written")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as fh:
            got = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise BundleError(weights, f"not a readable safetensors file ({err})") from err
    try:
        model = build_model(bundle.config, pretrained=False)  # the bundle's own weights replace any init
    except ValueError as err:
        raise BundleError(bundle.json_path, str(err)) from err
    own = model.state_dict()
    expected = {key: tuple(value.shape) for key, value in own.items()}
    if got != expected:
        raise BundleError(
            weights,
            f"tensors do not match the {bundle.config.arch}/{bundle.config.encoder} architecture: "
            + _describe_mismatch(expected, got),
        )
    state = load_file(str(weights), device="cpu")
    for key, value in state.items():
        if value.dtype.is_floating_point != own[key].dtype.is_floating_point:
            raise BundleError(weights, f"tensor {key!r} has dtype {value.dtype}, expected {own[key].dtype}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundleError(weights, f"cannot load the tensors: {err}") from err
    return model.to(device).eval(), bundle
