"""The three organ classes, their order, label values and display colours.

Per-class masks are stored as a boolean array ``(C, Z, Y, X)`` in the order of ``CLASSES``
(the order of the challenge's ``train.csv``). Organs may overlap in the ground truth, so
the per-class form is the faithful one. For napari's single editable Labels layer the
masks are flattened to one label per pixel (``masks_to_labels``): where organs overlap,
the later class in ``DISPLAY_PRIORITY`` is shown. The stored per-class masks are never
reduced by that view: see ``merge_label_edit``.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")
# label value in the napari Labels layer = index in CLASSES + 1; 0 is background
LABEL_VALUES: dict[str, int] = {name: i + 1 for i, name in enumerate(CLASSES)}
# fixed organ colours (RGBA 0..1), the same in every layer, screenshot and export
COLORS: dict[str, tuple[float, float, float, float]] = {
    "large_bowel": (0.20, 0.55, 1.00, 1.0),  # blue
    "small_bowel": (1.00, 0.80, 0.10, 1.0),  # yellow
    "stomach": (1.00, 0.25, 0.25, 1.0),  # red
}
# drawn last wins where organs overlap in the one-label-per-pixel view
DISPLAY_PRIORITY: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")


def label_color_dict() -> dict[int | None, tuple[float, float, float, float]]:
    """Colour mapping for a napari Labels layer (``DirectLabelColormap``)."""
    colors: dict[int | None, tuple[float, float, float, float]] = {
        0: (0.0, 0.0, 0.0, 0.0),
        None: (0.0, 0.0, 0.0, 0.0),
    }
    for name, value in LABEL_VALUES.items():
        colors[value] = COLORS[name]
    return colors


def masks_to_labels(masks: np.ndarray, classes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Flatten per-class masks ``(C, ...)`` to one label per pixel (``uint8``, 0 = background)."""
    masks = np.asarray(masks)
    if masks.shape[0] != len(classes):
        raise ValueError(f"masks have {masks.shape[0]} classes, expected {len(classes)} ({classes})")
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for name in DISPLAY_PRIORITY:
        labels[masks[classes.index(name)].astype(bool)] = LABEL_VALUES[name]
    return labels


def labels_to_masks(labels: np.ndarray, classes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """One-hot per-class boolean masks ``(C, ...)`` from a label image."""
    labels = np.asarray(labels)
    return np.stack([labels == LABEL_VALUES[name] for name in classes])


def merge_label_edit(stored_masks: np.ndarray, before_labels: np.ndarray, after_labels: np.ndarray) -> np.ndarray:
    """Apply an edit made on the one-label-per-pixel view to the stored per-class masks.

    Pixels whose displayed label did not change keep their stored per-class values (so an
    overlap the view could not show survives); pixels the clinician changed take exactly
    the new label (painting a pixel stomach makes it stomach only; erasing clears all).
    Pixels where the stored masks no longer show what the clinician saw (a prediction was
    stored while the view still showed older labels) also take the clinician's view: the
    result always displays exactly as ``after_labels``.
    """
    stored = np.asarray(stored_masks, dtype=bool)
    after_labels = np.asarray(after_labels)
    changed = (np.asarray(before_labels) != after_labels) | (masks_to_labels(stored) != after_labels)
    merged = stored.copy()
    merged[:, changed] = labels_to_masks(np.asarray(after_labels)[changed])
    return merged
