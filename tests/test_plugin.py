"""The npe2 contributions seen through napari: manifest, reader, writer, sample data."""

from pathlib import Path

import numpy as np
import pytest

from napari_gitseg._reader import get_reader
from napari_gitseg.classes import COLORS, LABEL_VALUES
from napari_gitseg.io import read_masks, read_stack
from napari_gitseg.phantom import make_phantom_case, write_phantom_dataset


def test_manifest_is_valid_and_lists_every_contribution():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-gitseg")
    ids = {c.id for c in manifest.contributions.commands}
    assert {
        "napari-gitseg.get_reader",
        "napari-gitseg.write_labels",
        "napari-gitseg.sample_phantom",
        "napari-gitseg.segment_widget",
        "napari-gitseg.review_widget",
        "napari-gitseg.train_widget",
    } <= ids
    for cmd in manifest.contributions.commands:  # every python_name resolves to a real object
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_reader_returns_none_for_paths_it_does_not_handle(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert get_reader(str(text)) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_cases=1, seed=3, n_slices=20, size=(96, 96))
    return root


def test_drag_and_drop_case_folder_opens_image_and_truth(make_napari_viewer, phantom_root):
    viewer = make_napari_viewer()
    case = phantom_root / "train" / "case1"
    layers = viewer.open(str(case), plugin="napari-gitseg")
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Image", "Labels"]
    image, labels = viewer.layers[0], viewer.layers[1]
    assert image.data.shape == (20, 96, 96) and image.data.dtype == np.uint16
    np.testing.assert_allclose(image.scale, (3.0, 1.5, 1.5))
    np.testing.assert_allclose(labels.scale, image.scale)
    # the slider reads "z" and positions are in mm in plain napari too (not the axis numbers -3, -2, -1)
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    assert [str(u) for u in image.units] == [str(u) for u in labels.units] == ["millimeter"] * 3
    truth = make_phantom_case(seed=3, case=1, day=0, n_slices=20, size=(96, 96))
    assert labels.metadata["gitseg"]["masks"].shape == truth.masks.shape
    assert np.array_equal(labels.metadata["gitseg"]["masks"], truth.masks)
    stomach = LABEL_VALUES["stomach"]
    np.testing.assert_allclose(labels.colormap.map(np.array([stomach]))[0], COLORS["stomach"], atol=1e-6)


def test_sample_data_and_writer_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-gitseg", "phantom_case")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    labels = viewer.layers[1]
    assert labels.data.shape == viewer.layers[0].data.shape == (144, 266, 266)
    out = tmp_path / "organs.csv"
    from napari_gitseg._writer import write_labels

    written = write_labels(
        str(out), labels.data, {"metadata": labels.metadata, "scale": labels.scale, "name": labels.name}
    )
    assert Path(written[0]).is_file()
    like = read_stack(_phantom_case_folder(tmp_path))
    back = read_masks(out, like)
    assert np.array_equal(back.masks, labels.metadata["gitseg"]["masks"])  # overlaps kept


def _phantom_case_folder(tmp_path):
    root = tmp_path / "like"
    write_phantom_dataset(root, n_cases=1, seed=0, n_slices=144, size=(266, 266))
    return root / "train" / "case1"


def test_a_folder_of_several_scans_opens_with_only_the_first_on_screen(make_napari_viewer, tmp_path):
    """Two case folders opened at once: both are read, but only the first scan's image and organs
    are visible (drawn together, one scan's organs would lie over the other's image)."""
    write_phantom_dataset(tmp_path, n_cases=2, seed=1, n_slices=6, size=(48, 48))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "train"), plugin="napari-gitseg")
    names = {layer.name: layer.visible for layer in viewer.layers}
    assert len(names) == 4, names  # image + organs of each scan
    first = viewer.layers[0].metadata["gitseg"]["name"]
    for layer in viewer.layers:
        assert layer.visible == (layer.metadata["gitseg"]["name"] == first), names
