"""napari sample data: a procedural phantom case with its organ labels."""

from __future__ import annotations

from napari_gitseg.layers import stack_layer_data


def phantom_case() -> list[tuple]:
    """One 144-slice phantom abdominal MRI case (seed 0) with ground-truth organ labels."""
    from napari_gitseg.phantom import make_phantom_case

    return stack_layer_data(make_phantom_case(seed=0, case=1, day=0))
