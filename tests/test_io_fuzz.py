"""Bounded fuzzing (hypothesis): RLE, slice names, the CSV reader, and the file readers on damaged files.

Readers given damaged bytes must raise ``GitsegInputError`` (never another exception type)
and must return: each call runs under a generous alarm that turns a hang into a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from napari_gitseg.io import GitsegInputError, read_train_csv, rle_decode, rle_encode
from napari_gitseg.io.dicom.series import read_dicom
from napari_gitseg.io.nifti import read_nifti
from napari_gitseg.io.rle import RLEError
from napari_gitseg.io.tiff import read_tiff
from napari_gitseg.io.train_csv import check_rle_syntax
from napari_gitseg.io.uwmgi import read_slice_png
from napari_gitseg.io.uwmgi_names import SliceName, format_slice_filename, parse_slice_filename

# bounded in the suite; benchmarks/fuzz_long.sh sets GITSEG_FUZZ_EXAMPLES for the long random run
LONG_RUN = int(os.environ.get("GITSEG_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONG_RUN or 150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=not LONG_RUN,
)
HANG_SECONDS = 60  # a liveness guard, far above any real read of these tiny files


@contextlib.contextmanager
def no_hang():
    """Fail instead of hanging forever (POSIX main thread only; elsewhere a no-op)."""
    if sys.platform == "win32" or not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum, frame):
        raise AssertionError(f"reader did not return within {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ RLE and names


@FUZZ
@given(arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    check_rle_syntax(rle)
    if rle:
        values = [int(v) for v in rle.split()]
        assert sum(values[1::2]) == mask.sum()


RLE_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.integers(-5, 500), max_size=12).map(lambda v: " ".join(map(str, v))),
    st.text(alphabet="0123456789 -+\t", max_size=30),
)


@FUZZ
@given(RLE_TEXT, st.integers(1, 20), st.integers(1, 20))
def test_rle_decode_random_strings(text, height, width):
    try:
        mask = rle_decode(text, (height, width))
    except RLEError:
        return
    assert mask.dtype == bool and mask.shape == (height, width)
    if mask.any():
        np.testing.assert_array_equal(rle_decode(rle_encode(mask), (height, width)), mask)


@FUZZ
@given(RLE_TEXT)
def test_rle_syntax_check_agrees_with_decoding(text):
    try:
        rle_decode(text, (1000, 1000))
        decodes = True
    except RLEError as err:
        decodes = "past the" in str(err)  # only the size check differs: the syntax check has no size
    try:
        check_rle_syntax(text)
        checks = True
    except RLEError:
        checks = False
    assert decodes == checks


SLICE_NAMES = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda n, w, h, sx, sy, tail: f"slice_{n}_{w}_{h}_{sx}_{sy}{tail}",
        st.text("0123456789", max_size=5),
        st.integers(-3, 5000),
        st.integers(-3, 5000),
        st.sampled_from(["1.50", "0", "1.", ".5", "2", "x"]),
        st.sampled_from(["1.50", "0.00", "3.25", "1e3"]),
        st.sampled_from([".png", ".PNG", ".png ", "", ".jpg"]),
    ),
)


@FUZZ
@given(SLICE_NAMES)
def test_parse_slice_filename_random_strings(name):
    try:
        parsed = parse_slice_filename(name)
    except ValueError:
        return
    assert isinstance(parsed, SliceName)
    assert parsed.width > 0 and parsed.height > 0 and parsed.spacing_x > 0 and parsed.spacing_y > 0
    again = parse_slice_filename(
        format_slice_filename(parsed.number, parsed.width, parsed.height, parsed.spacing_x, parsed.spacing_y)
    )
    assert (again.number, again.width, again.height) == (parsed.number, parsed.width, parsed.height)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_read_train_csv_random_text(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_text("id,class,segmentation\n" + text, encoding="utf-8")
    with no_hang():
        try:
            read_train_csv(path)
        except GitsegInputError as err:
            assert str(path) in str(err)


# ------------------------------------------------------------------ damaged files


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 3000, size=(12, 16), dtype=np.uint16)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff_bytes(compression) -> bytes:
    buffer = io.BytesIO()
    volume = np.random.default_rng(0).integers(0, 3000, size=(3, 8, 10), dtype=np.uint16)
    tifffile.imwrite(
        buffer,
        volume,
        imagej=True,
        resolution=(1 / 1.5, 1 / 1.5),
        metadata={"spacing": 3.0, "unit": "mm", "axes": "ZYX"},
        compression=compression,
    )
    return buffer.getvalue()


def _nifti_bytes(gz: bool) -> bytes:
    volume = np.random.default_rng(0).integers(0, 3000, size=(6, 5, 4)).astype(np.int16)
    img = nib.Nifti1Image(volume, np.diag([3.0, 3.0, 3.0, 1.0]))
    data = img.to_bytes()
    if gz:
        import gzip

        data = gzip.compress(data)
    return data


def _dicom_bytes() -> bytes:
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("MR_small.dcm"), "rb") as handle:
        return handle.read()


BASES = {
    "png": _png_bytes(),
    "tiff": _tiff_bytes(None),
    "tiff-zlib": _tiff_bytes("zlib"),
    "nii": _nifti_bytes(False),
    "nii.gz": _nifti_bytes(True),
    "dcm": _dicom_bytes(),
}


@st.composite
def damage(draw, base: bytes) -> bytes:
    data = bytearray(base)
    # most flips land in the header, where the structure is
    for _ in range(draw(st.integers(0, 6))):
        limit = draw(st.sampled_from([min(len(data), 400), len(data)]))
        at = draw(st.integers(0, limit - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _read(kind: str, path):
    if kind == "png":
        return read_slice_png(path)
    if kind.startswith("tiff"):
        return read_tiff(path)
    if kind.startswith("nii"):
        return read_nifti(path)
    return read_dicom(path)


FILE_NAMES = {
    "png": "slice_0001_16_12_1.50_1.50.png",
    "tiff": "scan.tif",
    "tiff-zlib": "scan.tif",
    "nii": "scan.nii",
    "nii.gz": "scan.nii.gz",
    "dcm": "scan.dcm",
}


@pytest.mark.parametrize("kind", list(BASES))
def test_undamaged_base_files_read(tmp_path, kind):
    path = tmp_path / FILE_NAMES[kind]
    path.write_bytes(BASES[kind])
    assert _read(kind, path) is not None


@pytest.mark.parametrize("kind", list(BASES))
# damaged DICOM files hold invalid values on purpose: pydicom's notices about them are expected here
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning", "ignore:The value length:UserWarning")
def test_damaged_files_raise_only_input_errors(tmp_path, kind):
    path = tmp_path / FILE_NAMES[kind]

    @settings(
        max_examples=(LONG_RUN // 10 or 120) if kind != "dcm" else (LONG_RUN // 20 or 60),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=not LONG_RUN,
    )
    @given(damage(BASES[kind]))
    def check(data):
        path.write_bytes(data)
        with no_hang():
            try:
                result = _read(kind, path)
            except GitsegInputError as err:
                assert str(path) in str(err)
                return
        assert result is not None  # damage that leaves a valid file may read

    check()


@pytest.mark.parametrize("token", ["++0", "+5", "5_0", "\u0665", "-1", "1e3", "99999999999999999999999"])
def test_rle_tokens_must_be_plain_ascii_integers(token):
    """Regression: the long fuzz run found '0 ++0' escaping as StopIteration."""
    with pytest.raises(RLEError):
        rle_decode(f"1 {token}", (4, 4))
