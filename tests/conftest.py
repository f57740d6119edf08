# --- io fixtures ---
# (owned by the io engineer: readers/writers tests; other sections may follow)
import pytest  # noqa: E402


@pytest.fixture
def io_shared_data():
    """The read-only real sample data folder; skips the test when it is absent."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"real sample data not found at {folder}")
    return folder


@pytest.fixture
def uw_case_day(tmp_path):
    """Factory: write a UW-Madison case-day of random 16-bit slices; returns the case-day folder."""
    import numpy as np
    from PIL import Image

    def make(
        case: int = 1,
        day: int = 1,
        numbers=(1, 2, 3, 4),
        height: int = 24,
        width: int = 32,
        spacing_xy=(1.5, 1.25),
        root=None,
        seed: int = 0,
    ):
        base = tmp_path if root is None else root
        scans = base / f"case{case}" / f"case{case}_day{day}" / "scans"
        scans.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for n in numbers:
            pixels = rng.integers(0, 4000, size=(height, width), dtype=np.uint16)
            name = f"slice_{n:04d}_{width}_{height}_{spacing_xy[0]:.2f}_{spacing_xy[1]:.2f}.png"
            Image.fromarray(pixels).save(scans / name)
        return scans.parent

    return make


@pytest.fixture
def dicom_series():
    """Factory: write a synthetic single-series DICOM folder with pydicom; returns (folder, volume)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    def make(
        folder,
        n: int = 4,
        rows: int = 12,
        cols: int = 16,
        gap: float = 2.5,
        pixel_spacing=(0.8, 0.9),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        rescale=None,
        series_uid=None,
        seed: int = 0,
        names=None,
    ):
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        volume = rng.integers(0, 3000, size=(n, rows, cols), dtype=np.uint16)
        uid = series_uid or generate_uid()
        normal = np.cross(orientation[:3], orientation[3:])
        for z in range(n):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.SeriesInstanceUID = uid
            ds.InstanceNumber = n - z  # deliberately not in position order
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
            ds.ImagePositionPatient = [f"{v:.4f}" for v in (np.array([-10.0, -20.0, 5.0]) + z * gap * normal)]
            ds.PixelSpacing = [f"{v}" for v in pixel_spacing]
            ds.SliceThickness = "3.0"
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            if rescale is not None:
                ds.RescaleSlope, ds.RescaleIntercept = (f"{v}" for v in rescale)
            ds.PixelData = volume[z].tobytes()
            name = names[z] if names else f"img_{(z * 7919) % 1000:04d}"  # file names not in slice order
            try:
                ds.save_as(folder / name, enforce_file_format=True)  # pydicom >= 3
            except TypeError:
                ds.save_as(folder / name, write_like_original=False)  # pydicom 2.4
        return folder, volume

    return make


# --- model fixtures (lead) ---
@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An untrained but valid small model bundle (Unet/resnet18, k=3): for plumbing tests, not accuracy."""
    import torch

    from napari_gitseg.model.bundle import save_bundle
    from napari_gitseg.model.factory import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(
        arch="Unet", encoder="resnet18", k=3, stride=2, arch_kwargs={"decoder_channels": [32, 16, 16, 8, 8]}
    )
    model = build_model(config)
    folder = tmp_path_factory.mktemp("bundle")
    save_bundle(model, config, folder / "tiny", training={"note": "untrained test fixture"})
    return folder / "tiny.json"


# --- dicom fixtures ---
# (DICOM RT-STRUCT / SEG export: every exported file goes through an independent validator)
@pytest.fixture
def dciodvfy():
    """Validate a DICOM file with dicom3tools' ``dciodvfy``: fails on any "Error" line.

    CI installs dicom3tools (.ci/run); where the binary is absent locally the check is skipped.
    """
    import os
    import shutil
    import subprocess

    binary = shutil.which("dciodvfy")

    def check(path) -> str:
        if binary is None:
            if os.environ.get("CI"):
                raise AssertionError("dciodvfy is missing on CI: .ci/run must install dicom3tools")
            return "skipped: dciodvfy not installed"
        run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
        return report

    return check


# --- markers ---
_QT_FIXTURES = {"qtbot", "make_napari_viewer", "make_napari_viewer_proxy"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a Qt fixture ``qt`` (so ``-m 'not qt'`` runs without a display)."""
    for item in items:
        if _QT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.qt)


# --- benchmark scripts ---
@pytest.fixture
def import_benchmark(monkeypatch):
    """``import_benchmark(name)``: a script of ``benchmarks/`` imported afresh as a module (``benchmarks/``
    is not a package: it goes on ``sys.path`` for the test only)."""
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load
