"""One small signal hub per viewer, so the Segment, Review and Train docks can talk."""

from __future__ import annotations

import weakref

from psygnal import Signal


class GitsegHub:
    """Signals shared by the gitseg docks of one viewer."""

    prediction_ready = Signal(object, object)  # (Stack, Prediction)
    model_changed = Signal(object)  # path of the model bundle now in use (or None)
    project_opened = Signal(str, str)  # (project folder, stack name) when a review starts
    project_model_found = Signal(object)  # the opened project's active model bundle (None: none yet)
    repredict_requested = Signal(object)  # Stack name whose unreviewed slices need new predictions


_HUBS: weakref.WeakKeyDictionary[object, GitsegHub] = weakref.WeakKeyDictionary()


def hub_for(viewer) -> GitsegHub:
    """The hub of ``viewer`` (created on first use)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands docks a PublicOnlyProxy of the viewer
    hub = _HUBS.get(viewer)
    if hub is None:
        hub = _HUBS[viewer] = GitsegHub()
    return hub
