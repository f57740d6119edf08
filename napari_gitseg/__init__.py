"""napari-gitseg: stomach and bowel segmentation on abdominal MRI, with a review and retrain loop.

This top-level module stays light (no torch, no Qt) so that napari can read the plugin
manifest without pulling in the deep-learning stack.
"""

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

from napari_gitseg import _triton_guard  # noqa: E402
from napari_gitseg.classes import CLASSES  # noqa: E402

_triton_guard.install()

__all__ = ["CLASSES", "__version__"]
