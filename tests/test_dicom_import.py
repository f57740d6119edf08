"""DICOM RT-STRUCT / SEG: bad input refused clearly, imports seeding the label store, and the CLI paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_gitseg.classes import CLASSES
from napari_gitseg.cli import main
from napari_gitseg.import_labels import import_labels
from napari_gitseg.io import GitsegInputError, read_stack, stack_info
from napari_gitseg.io.dicom.export import images_folder, write_dicom_labels
from napari_gitseg.io.dicom.labels import masks_from_file
from napari_gitseg.io.dicom.series import read_dicom
from napari_gitseg.io.dicom.write import write_dicom_series
from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.store import LabelStore


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case(2, n_slices=8, size=(48, 56))


@pytest.fixture
def series(tmp_path, phantom):
    """A phantom written as a DICOM series (read back as a Stack)."""
    write_dicom_series(tmp_path / "series", phantom)
    return read_dicom(tmp_path / "series")


def _edit_files(folder: Path, edit) -> None:
    for i, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        edit(i, ds)
        ds.save_as(path)


def _refused(err: pytest.ExceptionInfo, path, *words: str) -> None:
    assert isinstance(err.value, GitsegInputError) and str(path) in str(err.value), err.value
    for word in words:
        assert word in str(err.value), err.value


# ---- bad input --------------------------------------------------------------------------------
def test_mixed_frames_of_reference_are_refused(series):
    folder = Path(series.source)
    _edit_files(
        folder, lambda i, ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4" if i == 3 else ds.FrameOfReferenceUID)
    )
    with pytest.raises(GitsegInputError) as err:
        read_dicom(folder)
    _refused(err, folder, "frames of reference")


def test_mixed_orientations_are_refused(series):
    folder = Path(series.source)
    _edit_files(folder, lambda i, ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]) if i == 2 else None)
    with pytest.raises(GitsegInputError) as err:
        read_dicom(folder)
    _refused(err, folder, "orientations")


def test_missing_pixel_spacing_is_refused_and_nothing_written(series, phantom, tmp_path):
    folder = Path(series.source)
    _edit_files(folder, lambda i, ds: delattr(ds, "PixelSpacing"))
    stack = read_dicom(folder)
    out = tmp_path / "out" / "organs.dcm"
    for fmt in ("rtstruct", "seg"):
        with pytest.raises(GitsegInputError) as err:
            write_dicom_labels(out, stack, phantom.masks, fmt)
        _refused(err, folder, "PixelSpacing")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_failed_write_leaves_no_file(series, phantom, tmp_path, monkeypatch):
    out = tmp_path / "organs.dcm"

    def broken(self, path, **_kw):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", broken)
    with pytest.raises(OSError):
        write_dicom_labels(out, series, phantom.masks, "rtstruct")
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


def test_labels_on_a_series_that_is_not_open_are_refused(series, phantom, tmp_path):
    out = tmp_path / "rt" / "organs.dcm"
    write_dicom_labels(out, series, phantom.masks, "rtstruct")
    other = make_phantom_case(5, n_slices=8, size=(48, 56))
    write_dicom_series(tmp_path / "other", other)
    with pytest.raises(GitsegInputError) as err:
        masks_from_file(out, read_dicom(tmp_path / "other"))
    _refused(err, out, "not open")
    lonely = tmp_path / "elsewhere" / "deep" / "organs.dcm"
    lonely.parent.mkdir(parents=True)
    out.rename(lonely)
    with pytest.raises(GitsegInputError) as err:
        read_stack(lonely)
    _refused(err, lonely, "not found")


@pytest.mark.parametrize("shift", ["in_plane", "off_plane"])
def test_contours_outside_the_image_are_refused(series, phantom, tmp_path, shift):
    out = tmp_path / "organs.dcm"
    write_dicom_labels(out, series, phantom.masks, "rtstruct")
    ds = pydicom.dcmread(out)
    contour = next(r for r in ds.ROIContourSequence if "ContourSequence" in r).ContourSequence[0]
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    points += (500.0, 0, 0) if shift == "in_plane" else (0, 0, 1.5)  # axial series, 3 mm slices
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    ds.save_as(out)
    with pytest.raises(GitsegInputError) as err:
        read_stack(out)
    _refused(err, out, "outside the image")


def test_seg_with_an_unknown_segment_is_refused(series, phantom, tmp_path):
    out = tmp_path / "organs.dcm"
    write_dicom_labels(out, series, phantom.masks, "seg")
    ds = pydicom.dcmread(out)
    ds.SegmentSequence[1].SegmentLabel = "Liver"
    code = ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    code.CodeValue, code.CodeMeaning = "10200004", "Liver"
    ds.save_as(out)
    with pytest.raises(GitsegInputError) as err:
        read_stack(out)
    _refused(err, out, "'Liver'")


def test_rtstruct_with_other_rois_keeps_the_organs_and_names_the_rest(series, phantom, tmp_path):
    out = tmp_path / "organs.dcm"
    write_dicom_labels(out, series, phantom.masks, "rtstruct")
    ds = pydicom.dcmread(out)
    ds.StructureSetROISequence[0].ROIName = "PTV_45"
    ds.save_as(out)
    stack = read_stack(out)
    assert not stack.masks[0].any() and stack.masks[1:].any() and "PTV_45" in stack.meta["note"]


# ---- import into the label store ----------------------------------------------------------------
def test_import_seeds_clinician_labels_and_predictions_keep_off(series, phantom, tmp_path):
    out = tmp_path / "series" / "planning_RS.dcm"  # beside the images, as PACS exports put it
    write_dicom_labels(out, series, phantom.masks, "rtstruct")
    opened = read_stack(tmp_path / "series")  # the folder opens with its planning contours
    assert opened.meta["masks_source"] == str(out) and opened.masks.any()
    project = tmp_path / "project"
    with LabelStore.open(project) as store:  # a clinician already corrected one slice
        store.register_stack(opened.name, opened.slice_ids, opened.shape, opened.spacing, opened.source)
        store.save(opened.slice_ids[4], np.zeros((3, 48, 56), bool), source="clinician")
    result = import_labels(project, out)
    labelled = np.flatnonzero(opened.labelled)
    assert result["imported"] == len(labelled) - 1 and result["kept_clinician"] == 1
    with LabelStore.open(project) as store:
        assert set(store.clinician_slices(opened.name)) == {opened.slice_ids[z] for z in labelled} | {
            opened.slice_ids[4]
        }
        first = opened.slice_ids[labelled[0]]
        rec = store.latest(first)
        assert rec.source == "imported" and "planning_RS.dcm" in rec.note
        np.testing.assert_array_equal(rec.masks, opened.masks[:, labelled[0]])
        assert not store.latest(opened.slice_ids[4]).masks.any()  # the correction was not replaced
        assert store.save(first, np.ones((3, 48, 56), bool), source="model") is None
        assert store.counts(opened.name)["clinician"] == len(labelled)


def test_a_version_1_store_is_migrated_to_allow_imported(tmp_path):
    import sqlite3

    from napari_gitseg.store import schema

    with LabelStore.open(tmp_path) as store:
        store.register_stack("s", ["a", "b"], (2, 4, 4), (1, 1, 1))
        store.save("a", np.ones((3, 4, 4), bool), source="clinician")
    raw = sqlite3.connect(tmp_path / schema.DB_NAME)
    old = schema.VERSIONS_TABLE.format(name="v1").replace(", 'imported'", "")
    raw.executescript(
        f"BEGIN; {old}; INSERT INTO v1 SELECT * FROM versions; DROP TABLE versions; "
        "ALTER TABLE v1 RENAME TO versions; UPDATE meta SET value='1' WHERE key='schema_version'; COMMIT;"
    )
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO versions (slice_id, version, source, reviewed, created, shape, masks, crc) "
            "VALUES ('b', 1, 'imported', 0, 0, '[]', x'', 0)"
        )
    raw.close()
    with LabelStore.open(tmp_path) as store:
        assert store.save("b", np.ones((3, 4, 4), bool), source="imported") == 1
        assert store.latest("a").source == "clinician" and store.clinician_slices("s") == ["a", "b"]


# ---- command line -----------------------------------------------------------------------------
def test_cli_export_import_info(series, phantom, tmp_path, capsys, dciodvfy):
    project = tmp_path / "project"
    with LabelStore.open(project) as store:
        store.register_stack(series.name, series.slice_ids, series.shape, series.spacing, series.source)
        store.save_many(
            [
                {"slice_id": sid, "masks": phantom.masks[:, z], "source": "clinician"}
                for z, sid in enumerate(series.slice_ids)
            ]
        )
    for fmt in ("rtstruct", "seg"):
        out = tmp_path / "export" / f"{fmt}.dcm"
        assert main(["export", str(project), "--format", fmt, "--out", str(out)]) == 0
        dciodvfy(out)
        assert out.with_name(f"{fmt}.provenance.json").is_file()
        if fmt == "seg":
            np.testing.assert_array_equal(read_stack(out).masks, phantom.masks)
    info = stack_info(tmp_path / "export" / "rtstruct.dcm")["stacks"][0]
    assert info["masks_source"].endswith("rtstruct.dcm") and info["class_slices"]["stomach"] > 0
    capsys.readouterr()
    assert main(["import", str(tmp_path / "export" / "seg.dcm"), "--store", str(tmp_path / "p2")]) == 0
    assert '"imported": ' in capsys.readouterr().out


def test_cli_export_of_a_non_dicom_stack(phantom, tmp_path, capsys, dciodvfy):
    project = tmp_path / "project"
    with LabelStore.open(project) as store:
        store.register_stack(phantom.name, phantom.slice_ids, phantom.shape, phantom.spacing, phantom.source)
        store.save_many(
            [
                {"slice_id": sid, "masks": phantom.masks[:, z], "source": "clinician"}
                for z, sid in enumerate(phantom.slice_ids)
            ]
        )
    from napari_gitseg.project import save_stack_snapshot

    save_stack_snapshot(project, phantom)
    out = tmp_path / "export" / "organs.dcm"
    assert main(["export", str(project), "--format", "rtstruct", "--out", str(out)]) == 2
    assert "--with-images" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(project), "--format", "rtstruct", "--out", str(out), "--with-images"]) == 0
    dciodvfy(out)
    dciodvfy(sorted(images_folder(out).iterdir())[0])
    back = read_stack(out)
    np.testing.assert_array_equal(back.image, phantom.image)


def test_cli_predict_writes_seg_on_the_series(series, tmp_path, dciodvfy):
    from napari_gitseg.resources import default_model_path

    if default_model_path() is None:
        pytest.skip("no bundled default model")
    out = tmp_path / "pred.dcm"
    assert main(["predict", series.source, "--out", str(out), "--format", "seg", "--device", "cpu"]) == 0
    dciodvfy(out)
    seg = pydicom.dcmread(out)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert read_stack(out).masks.shape == (len(CLASSES), *series.shape)
    assert os.path.basename(read_stack(out).meta["masks_source"]) == "pred.dcm"


def test_napari_reader_opens_a_seg_as_labels_on_its_series(series, phantom, tmp_path):
    from napari_gitseg._reader import get_reader
    from napari_gitseg.classes import masks_to_labels

    out = tmp_path / "rt" / "organs.dcm"
    write_dicom_labels(out, series, phantom.masks, "seg")
    reader = get_reader(str(out))
    assert reader is not None
    (image, _ik, itype), (labels, lk, ltype) = reader(str(out))
    assert (itype, ltype) == ("image", "labels")
    np.testing.assert_array_equal(image, phantom.image)
    np.testing.assert_array_equal(labels, masks_to_labels(phantom.masks))
    assert lk["scale"] == pytest.approx(phantom.spacing)
