"""``gitseg view``: napari with the plugin's docks on a stack or on the bundled phantom.

The app imports torch before Qt/OpenGL come up: in that order triton (pulled in by
torchvision) loads cleanly, so GPU users keep ``torch.compile``. Inside a napari started
some other way, ``napari_gitseg._triton_guard`` keeps the late torch import safe.
"""

from __future__ import annotations

from pathlib import Path

DOCKS = ("Segment organs", "Review and correct", "Retrain model")


def build_viewer(
    path: str | None = None,
    sample: bool = False,
    model: str | None = None,
    store: str | None = None,
    show: bool = True,
    segment: bool = False,
):
    """A napari viewer with the data opened and the three gitseg docks; returns (viewer, widgets)."""
    import napari
    import torch  # noqa: F401  (before Qt/OpenGL: see module docstring)
    import torchvision  # noqa: F401

    viewer = napari.Viewer(title="napari-gitseg", show=show)
    viewer.window.resize(1500, 950)
    return viewer, dock_gitseg(viewer, path=path, sample=sample, model=model, store=store, segment=segment)


def dock_gitseg(
    viewer,
    path: str | None = None,
    sample: bool = False,
    model: str | None = None,
    store: str | None = None,
    segment: bool = False,
) -> dict:
    """Open ``path`` (or the sample) in ``viewer``, dock the three gitseg widgets and return them by name.

    With ``segment`` the Segment dock starts on the opened scan at once (what ``make run`` shows), and a
    ground-truth layer that came with the data is hidden so the model's masks are what one sees."""
    from qtpy.QtCore import QTimer

    if path:
        viewer.open(path, plugin="napari-gitseg")
    elif sample:
        viewer.open_sample("napari-gitseg", "phantom_case")
    widgets, docks = {}, {}
    for name in DOCKS:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-gitseg", name, tabify=name != DOCKS[0])
        widgets[name], docks[name] = widget, dock
    QTimer.singleShot(0, docks[DOCKS[0]].raise_)  # show the Segment tab first
    if model:
        widgets["Segment organs"].set_model_path(model)
    if store:
        widgets["Review and correct"].set_store_folder(store)
    if viewer.layers:  # (the plugin's layers name their axes z, y, x: napari labels the slider from them)
        viewer.dims.set_current_step(0, viewer.layers[0].data.shape[0] // 2)
        viewer.reset_view()
    if segment and viewer.layers:
        from napari_gitseg.layers import layer_role

        for layer in viewer.layers:
            if layer_role(layer) == "truth":
                layer.visible = False
        widgets["Segment organs"].run()
    return widgets


def launch_viewer(
    path: str | None = None,
    sample: bool = False,
    model: str | None = None,
    store: str | None = None,
    screenshot: str | None = None,
    quit_after: float | None = None,
    show: bool = True,
    segment: bool = False,
) -> int:
    """Open napari with gitseg docked and run it until the window closes; returns 0.

    ``screenshot`` is taken 3 s after start, or with ``segment`` once the prediction is on screen."""
    import napari
    from qtpy.QtCore import QTimer

    viewer, widgets = build_viewer(path=path, sample=sample, model=model, store=store, show=show, segment=segment)
    if screenshot:
        segmenter = widgets["Segment organs"]

        def _shot():
            if segment and segmenter.running:
                QTimer.singleShot(250, _shot)
                return
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(screenshot, canvas_only=False)
            print(f"screenshot saved to {screenshot}")

        QTimer.singleShot(3000, _shot)
    if quit_after:
        QTimer.singleShot(int(quit_after * 1000), viewer.close)
    napari.run()
    return 0
