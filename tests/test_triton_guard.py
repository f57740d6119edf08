"""napari is already running (OpenGL up), then the plugin loads and imports torch/smp.

Without the guard this path died with SIGSEGV inside libtriton's LLVM initialisers
(torch 2.14.1+cu130, Mesa llvmpipe under Xvfb). It runs in a child process so a crash
is a test failure, not a dead test session.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from napari_gitseg import _triton_guard
from napari_gitseg._triton_guard import TritonGuardFinder, llvm_already_loaded

pytestmark = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    assert "torch" not in sys.modules
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.rand(32, 32))
    QApplication.processEvents()
    # what napari does when the user opens a dock: import the plugin's widget module,
    # which imports the model code (torch, torchvision, smp) for the first time
    import napari_gitseg._widgets.segment
    from napari_gitseg.model.factory import ModelConfig, build_model
    import torch
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18", k=3, stride=1))
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
    print("OK", tuple(out.shape), "llvm:", {llvm}, flush=True)
    viewer.close()
    """
)


def test_plugin_imports_torch_after_napari_opengl_is_up():
    code = CHILD.replace("{llvm}", "__import__('napari_gitseg._triton_guard', fromlist=['x']).llvm_already_loaded()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode} (-11 = segfault)\n{proc.stderr[-3000:]}"
    assert "OK (1, 3, 64, 64)" in proc.stdout


def test_llvm_detection_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 0:0 0 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert llvm_already_loaded(str(maps))
    maps.write_text("7f00-7f01 r-xp 0 0:0 0 /usr/lib/libc.so.6\n")
    assert not llvm_already_loaded(str(maps))


def test_hook_refuses_only_triton_and_only_when_llvm_is_loaded(monkeypatch):
    finder = TritonGuardFinder()
    monkeypatch.setattr(_triton_guard, "llvm_already_loaded", lambda: True)
    with pytest.raises(ModuleNotFoundError, match="triton is disabled"):
        finder.find_spec("triton")
    assert finder.find_spec("numpy") is None
    monkeypatch.setenv("GITSEG_ALLOW_TRITON", "1")
    assert finder.find_spec("triton") is None
    monkeypatch.delenv("GITSEG_ALLOW_TRITON")
    monkeypatch.setattr(_triton_guard, "llvm_already_loaded", lambda: False)
    assert finder.find_spec("triton") is None
    assert any(isinstance(f, TritonGuardFinder) for f in sys.meta_path)  # installed by the package
