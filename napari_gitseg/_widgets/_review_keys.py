"""Keyboard-first review: the Review dock's shortcuts, bound on its organ layer.

The keys act while the review layer is the active layer (as it is during review). They
replace napari's Labels mode keys 1-3 and B (preserve labels) on that layer only (erase stays
on E, paint on P, fill on F); Ctrl+Z / Shift+Ctrl+Z stay napari's undo / redo.
"""

from __future__ import annotations

from napari_gitseg.classes import CLASSES

#: action name -> (key in napari's notation, what it does); the dock's tooltips and the README show these
SHORTCUTS: dict[str, tuple[str, str]] = {
    "accept": ("A", "Accept the slice as shown and go to the next least confident"),
    "next": ("N", "Next least confident slice"),
    "previous": ("Shift-N", "Previous slice (before the last jump)"),
    "revert": ("Shift-R", "Revert the slice to the chosen version"),
    "fill": ("I", "Fill between: interpolate the selected organ from the nearest corrected slice"),
    "undo_fill": ("Shift-I", "Undo the last fill between, learn from corrections or propagate"),
    "learn": ("Shift-L", "Learn from corrections: relabel this scan's unreviewed slices the way you corrected others"),
    "refine": ("R", "Refine the slice with the model, keeping your strokes"),
    "box": ("B", "Box tool on / off: drag a box around an organ piece, the foundation model draws it"),
    "refine_boxes": ("Control-B", "Refine by boxes: each piece of the selected organ re-drawn by the foundation model"),
    "propagate": ("Shift-B", "Propagate the selected organ to the next slices with boxes (again: stop)"),
    **{f"organ_{i + 1}": (str(i + 1), f"Paint {name.replace('_', ' ')}") for i, name in enumerate(CLASSES)},
}


def shortcut_text(action: str) -> str:
    """``"(A)"``-style hint for a button label or tooltip."""
    return SHORTCUTS[action][0].replace("-", "+")


def tooltip(action: str) -> str:
    """Tooltip text: what the action does and its key."""
    key, what = SHORTCUTS[action]
    return f"{what} [{key.replace('-', '+')}]"


def bind_review_keys(layer, actions: dict) -> None:
    """Bind each ``SHORTCUTS`` action found in ``actions`` (name -> callable without arguments) on ``layer``."""
    for name, (key, _what) in SHORTCUTS.items():
        if name in actions:
            func = actions[name]
            layer.bind_key(key, lambda _layer, f=func: f(), overwrite=True)
