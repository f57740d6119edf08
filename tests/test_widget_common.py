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
