"""Helpers shared by the docks: closed-dock guards, wrapping status lines."""


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


def test_progress_is_painted_with_the_next_update_not_at_once(qtbot):
    # QProgressBar.setValue repaints synchronously; in napari's window every such repaint
    # recomposes the whole OpenGL window (~30 ms of GUI time per progress event, measured)
    from magicgui.widgets import ProgressBar
    from qtpy.QtCore import QEvent, QObject

    from napari_gitseg._widgets._common import set_progress

    class PaintCounter(QObject):
        paints = 0

        def eventFilter(self, obj, event):
            if event.type() == QEvent.Paint:
                self.paints += 1
            return False

    bar = ProgressBar(min=0, max=100, value=0)
    qtbot.addWidget(bar.native)
    bar.native.show()
    qtbot.waitExposed(bar.native)
    qtbot.wait(50)  # the first paint of the shown bar
    counter = PaintCounter()
    bar.native.installEventFilter(counter)
    bar.value = 10  # the plain setter: painted inside the call (what set_progress avoids)
    assert counter.paints >= 1
    counter.paints = 0
    set_progress(bar, 42)
    assert bar.value == 42 and counter.paints == 0 and bar.native.updatesEnabled()
    qtbot.waitUntil(lambda: counter.paints >= 1, timeout=2000)  # painted by the next ordinary update
    set_progress(bar, 42)  # unchanged: nothing to do
    assert bar.value == 42
