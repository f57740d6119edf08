"""Helpers shared by the docks: progress bars, closed-dock guards, wrapping status lines."""

from types import SimpleNamespace

from napari.utils import progress


def test_worker_progress_shows_the_true_position_and_clamps():
    from napari_gitseg._widgets._common import set_worker_progress

    pbar = progress(total=0, desc="test")
    worker = SimpleNamespace(pbar=pbar)
    try:
        set_worker_progress(worker, 30, 144)
        assert (pbar.n, pbar.total) == (30, 144)
        set_worker_progress(worker, 12, 144)  # a position, not an increment
        assert pbar.n == 12
        set_worker_progress(worker, 500, 144)
        assert pbar.n == 144
        set_worker_progress(SimpleNamespace(), 3, 10)  # a worker without a bar is fine
    finally:
        pbar.close()


def test_callbacks_after_the_dock_closed_are_dropped(qtbot):
    from magicgui.widgets import Container

    from napari_gitseg._widgets._common import is_alive, status_label, when_alive

    class Dock(Container):
        def __init__(self):
            super().__init__()
            self.line = status_label()
            self.append(self.line)
            self.calls = 0

        @when_alive
        def on_result(self, text):
            self.calls += 1
            self.line.value = text

    dock = Dock()
    assert dock.line.native.wordWrap()
    dock.on_result("first")
    assert dock.calls == 1 and dock.line.value == "first" and is_alive(dock)
    native = dock.native
    native.deleteLater()
    qtbot.waitUntil(lambda: not is_alive(dock), timeout=5000)
    dock.on_result("late")  # would raise "wrapped C/C++ object has been deleted" without the guard
    assert dock.calls == 1
