"""Names that come from data (case folders, CSV ids, JSON) never lead outside the project folder."""

import pytest

from napari_gitseg.project import Project, default_project_folder

HOSTILE = [
    "../../etc/passwd",
    "..",
    "/abs/olute",
    "case1/../../x",
    "..\\..\\win",
    "a\x00b",
    "",
    ".",
    "~root",
    "case1_day0_slice_0001/../../../tmp",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_snapshot_paths_stay_in_the_project(tmp_path, name):
    project = tmp_path / "proj"
    path = Project(project).snapshot_path(name)
    assert path.resolve().parent == (project / "images").resolve()
    assert path.suffix == ".npz" and path.name != ".npz"


@pytest.mark.parametrize("name", HOSTILE)
def test_user_project_folders_stay_in_the_user_root(tmp_path, monkeypatch, name):
    monkeypatch.setenv("GITSEG_HOME", str(tmp_path / "home"))
    folder = default_project_folder("", name)  # no source path: goes to the user's data dir
    assert folder.resolve().parent == (tmp_path / "home" / "projects").resolve()


@pytest.mark.parametrize("version", ["../v0001", "v0001/../../x", "/etc/v0001", "v1x", "v0000"])
def test_registry_version_names_cannot_point_elsewhere(tmp_path, version):
    from napari_gitseg.model.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError):
        registry.path_of(version)
