"""The project folder (napari_gitseg.project.Project): one object knows its layout and the round's minimum."""

import pytest

from napari_gitseg.model.registry import RegistryError
from napari_gitseg.project import MIN_CLINICIAN_LABELS, Project, round_refusal


def test_the_layout_of_a_project_folder(tmp_path):
    project = Project(str(tmp_path / "p"))
    assert project.folder == tmp_path / "p" and project == Project(tmp_path / "p")
    assert project.registry_folder == tmp_path / "p" / "models"
    assert project.jobs_folder == tmp_path / "p" / "jobs"
    assert project.snapshot_path("case1_day0") == tmp_path / "p" / "images" / "case1_day0.npz"
    assert not project.folder.exists()  # asking for paths writes nothing
    assert project.model_versions() == ([], None)
    work = project.round_workdir()
    assert work.is_dir() and work.parent == project.jobs_folder and work.name.startswith("round-")


def test_a_model_path_comes_from_the_registry(tmp_path, tiny_bundle):
    from napari_gitseg.model.bundle import load_bundle

    project = Project(tmp_path / "p")
    with pytest.raises(RegistryError):
        project.model_path("v0001")  # no registry yet
    model, bundle = load_bundle(tiny_bundle)
    version = project.registry().add(model, bundle.config, activate=True)
    assert project.model_path(version) == project.registry_folder / f"{version}.json"
    assert project.model_path(version).is_file()
    assert project.model_versions()[1] == version
    with pytest.raises(RegistryError):
        project.model_path("v0002")  # not registered: never a guessed file name


def test_snapshots_round_trip_and_a_missing_one_says_how_to_make_it(tmp_path):
    from napari_gitseg.io.errors import GitsegInputError
    from napari_gitseg.phantom import make_phantom_case

    case = make_phantom_case(seed=3, n_slices=4, size=(32, 32))
    project = Project(tmp_path / "p")
    with pytest.raises(GitsegInputError, match="Review dock"):
        project.load_snapshot(case.name)
    assert project.save_snapshot(case) == project.snapshot_path(case.name)
    back = project.load_snapshot(case.name)
    assert back.slice_ids == list(case.slice_ids) and (back.image == case.image).all()


def test_one_minimum_of_clinician_labels():
    assert MIN_CLINICIAN_LABELS >= 2  # one held out as the frozen validation set, one to train on
    assert round_refusal(MIN_CLINICIAN_LABELS) is None
    refusal = round_refusal(MIN_CLINICIAN_LABELS - 1)
    assert refusal and f"at least {MIN_CLINICIAN_LABELS} slices" in refusal and "Accept" in refusal
