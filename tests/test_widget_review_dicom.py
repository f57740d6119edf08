"""The Review dock's DICOM export: the Format box picks RT-STRUCT, the images come along as DICOM."""

import numpy as np
import pytest

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.io import read_stack
from napari_gitseg.io.dicom.export import images_folder
from napari_gitseg.layers import image_layer_data
from napari_gitseg.phantom import make_phantom_case


@pytest.mark.qt
def test_review_dock_exports_an_rtstruct_with_its_images(make_napari_viewer, qtbot, tmp_path, dciodvfy):
    from napari_gitseg._widgets.review import ReviewWidget

    case = make_phantom_case(seed=4, n_slices=6, size=(64, 64))
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    widget.set_store_folder(str(tmp_path / "proj"))
    widget._image.value = case.name
    widget.start_review()
    qtbot.waitUntil(lambda: widget.labels_layer is not None, timeout=10000)
    step = list(viewer.dims.current_step)
    step[0] = 3
    viewer.dims.current_step = tuple(step)
    widget.labels_layer.brush_size = 7
    widget.labels_layer.paint((3, 30, 30), LABEL_VALUES["stomach"])
    widget.accept_slice()

    widget._export_format.value = "rtstruct"
    out = tmp_path / "export" / "organs.dcm"
    future = widget.export_to(str(out))
    written = future.result(timeout=60)
    assert out in written and out.with_name("organs.provenance.json") in written
    assert any(p.parent == images_folder(out) for p in written)
    dciodvfy(out)
    back = read_stack(out)
    assert back.masks[2, 3, 30, 30] and not back.masks[:, :3].any()  # only the reviewed slice is exported
    np.testing.assert_array_equal(back.image, case.image)
    widget._io.close()
