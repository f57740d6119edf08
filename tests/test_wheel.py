"""The wheel napari users install: it carries the manifest and the default model, and finds the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the build reads: the project files plus the default bundle (copied, so the build's
# build/ and *.egg-info never land in the checkout)
SOURCES = [
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "constraints.txt",
    "napari_gitseg",
    "training",
    "resources/models/default.json",
    "resources/models/default.safetensors",
]


@pytest.mark.slow
def test_wheel_carries_the_manifest_and_the_default_model(tmp_path):
    pytest.importorskip("setuptools.command.bdist_wheel")  # setuptools >= 70.1 (the test extra)
    src = tmp_path / "src"
    for rel in SOURCES:
        if not (REPO / rel).exists():
            pytest.skip(f"{rel} is missing from this checkout")
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "default_model"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
    (wheel,) = dist.glob("napari_gitseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # read once: the member names and the METADATA headers
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    for member in (
        "napari_gitseg/napari.yaml",
        "napari_gitseg/default_model/default.json",
        "napari_gitseg/default_model/default.safetensors",
    ):
        assert member in names, f"{member} is not in {wheel.name}"
    assert not any(n.startswith(("resources/", "tests/")) for n in names)
    # the licence as an SPDX expression (metadata 2.4; the TOML-table form stops building in 2027) and its text
    assert "License-Expression: BSD-3-Clause" in headers
    assert "License-File: LICENSE" in headers
    from napari_gitseg import __version__

    assert f"Version: {__version__}" in headers  # the one version source: the package's __version__
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    probe = (
        "import json, napari_gitseg, napari_gitseg.resources as r; "
        "print(json.dumps([napari_gitseg.__file__, str(r.default_model_path())]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GITSEG_DEFAULT_MODEL")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout
    package_file, model = (Path(p) for p in json.loads(out.strip().splitlines()[-1]))
    assert package_file.is_relative_to(site / "napari_gitseg")
    assert model == site / "napari_gitseg" / "default_model" / "default.json"
    bundle = json.loads(model.read_text())
    assert (model.parent / bundle["weights"]).stat().st_size == (
        REPO / "resources/models/default.safetensors"
    ).stat().st_size
