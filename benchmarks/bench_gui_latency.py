"""How responsive napari stays while gitseg works: the longest event-loop stall.

A QTimer ticks every 5 ms on the GUI thread; the longest gap between ticks (minus 5 ms) is
the worst stall a user would feel. Measured while (a) the Segment dock predicts a 144-slice
case, (b) the Train dock runs one retraining round in the background worker, and (c) idle
(the baseline, measured in the same run); also napari alone refreshing a labels layer (the
floor of any step that shows a result: with software OpenGL one redraw of the window takes
tens of ms), the time from Accept to the next slice shown, and the box tools (LiteMedSAM): box ->
mask on a new slice and with its embedding cached, Propagate over 10 slices.
Goal: stall < 50 ms for (a) and (b).

Run under a display: ``xvfb-run -a .venv/bin/python benchmarks/bench_gui_latency.py``
(``--why`` also prints the GUI thread's Python stacks sampled during each longest stall; it reads other
threads' frames, which can crash CPython 3.11 (python/cpython#111363): a diagnostic, not for every run).

What the stalls are on two 2-core machines, and what was fixed (progress is set through
``_common.set_progress`` so that it paints with the next ordinary update): ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


class StallProbe:
    """Records the longest gap between 5 ms timer ticks on the Qt event loop."""

    def __init__(self, interval_ms: int = 5):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.reset()

    def reset(self) -> None:
        self.last = time.perf_counter()
        self.gaps: list[float] = []
        self.ends: list[float] = []  # when each gap ended (to find what ran during the longest)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.ends.append(now)
        self.last = now

    def longest(self) -> tuple[float, float]:
        """(start, end) of the longest gap between ticks."""
        if len(self.gaps) < 2:
            return (0.0, 0.0)
        i = 1 + int(np.argmax(self.gaps[1:]))
        return self.ends[i] - self.gaps[i], self.ends[i]

    def start(self) -> None:
        self.reset()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        gaps = np.array(self.gaps[1:] or [0.0])
        stall = np.maximum(gaps - self.interval, 0)
        return {
            "max_ms": 1000 * float(stall.max()),
            "p99_ms": 1000 * float(np.percentile(stall, 99)),
            "ticks": len(gaps),
        }


class StackSampler:
    """``--why``: samples the Python stacks of the GUI thread (and, shorter, of every other thread) every 2 ms
    from another thread, so the frames that ran during the longest stall can be printed (C code shows as its
    Python caller). Few GUI samples over a long stall mean another thread held the GIL: its frames say which."""

    def __init__(self, interval_s: float = 0.002, depth: int = 14, other_depth: int = 6):
        import threading

        self.gui_thread, self.sampler_thread = threading.get_ident(), None
        self.interval, self.depth, self.other_depth = interval_s, depth, other_depth
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.others: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        self._thread.start()

    @staticmethod
    def _names(frame, depth: int) -> tuple[str, ...]:
        names = []
        while frame is not None and len(names) < depth:
            code = frame.f_code
            names.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return tuple(names)

    def _run(self) -> None:
        import sys
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            now = time.perf_counter()
            for ident, frame in sys._current_frames().items():
                if ident == self.gui_thread:
                    self.samples.append((now, self._names(frame, self.depth)))
                elif ident != me:
                    names = self._names(frame, self.other_depth)
                    if names and not names[0].startswith(("threading.py:wait", "queue.py:get", "selectors.py")):
                        self.others.append((now, names))

    def report(self, window: tuple[float, float], top: int = 3) -> list[str]:
        """The most frequent stacks sampled inside ``window`` (innermost frame first), with their counts: the GUI
        thread's, then (``other:``) the busy frames of the other threads."""
        from collections import Counter

        counts = Counter(stack for t, stack in self.samples if window[0] <= t <= window[1])
        others = Counter(stack for t, stack in self.others if window[0] - 0.01 <= t <= window[1] + 0.01)
        lines = [f"{n} x " + " < ".join(stack) for stack, n in counts.most_common(top)]
        return lines + [f"other: {n} x " + " < ".join(stack) for stack, n in others.most_common(top)]

    def stop(self) -> None:
        self._stop.set()


_HEARTBEAT = []  # a 5 ms QTimer that wakes the waits below (created on first use)


def _pump(app) -> None:
    """Process events, sleeping in Qt (the GIL released) until the next one, as napari's own event loop does;
    a 5 ms heartbeat bounds the sleep. A loop of ``processEvents(); sleep(1 ms)`` instead took the GIL a
    thousand times a second from the threads being measured."""
    from qtpy.QtCore import QEventLoop, QTimer

    if not _HEARTBEAT:
        timer = QTimer()
        timer.setInterval(5)
        timer.timeout.connect(lambda: None)
        timer.start()
        _HEARTBEAT.append(timer)
    app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents | QEventLoop.ProcessEventsFlag.WaitForMoreEvents)


def wait_until(app, predicate, timeout: float) -> float:
    t0 = time.perf_counter()
    while not predicate():
        _pump(app)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("benchmark step timed out")
    return time.perf_counter() - t0


def idle(app, seconds: float) -> None:
    """Run the event loop for ``seconds``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _pump(app)


def _napari_floor(app, viewer, case, kwargs, probe: StallProbe, results: dict) -> None:
    """napari's own costs, measured before gitseg works: a first labels layer (shaders, textures: the
    baseline of a cold Run) and one labels refresh of the slice on screen (the floor of any result)."""
    t0 = time.perf_counter()
    axes = {k: kwargs[k] for k in ("scale", "axis_labels", "units") if k in kwargs}  # as the plugin's layers
    scratch = viewer.add_labels(np.zeros(case.image.shape, np.uint8), name="scratch", **axes)
    app.processEvents()
    results["napari_first_labels_layer_ms"] = 1000 * (time.perf_counter() - t0)
    idle(app, 1.0)
    probe.start()
    z = int(viewer.dims.current_step[0])
    for value in (1, 2, 3, 0, 1):
        scratch.data[z] = value
        scratch.refresh()
        idle(app, 0.3)
    results["napari_refresh"] = probe.stop()
    viewer.layers.remove(scratch)
    idle(app, 1.0)


def _accept_times(app, review, segment, case, project: Path) -> list[float]:
    """ms from Accept to the next slice shown, 5 times accepting as soon as a slice is shown and 5 times after
    half a second on it, once the prediction is stored for review."""
    review.set_store_folder(str(project))
    review._image.value = case.name
    review.start_review()
    wait_until(app, lambda: review.labels_layer is not None, 60)
    segment._hub.prediction_ready.emit(case, segment.last_prediction)
    wait_until(app, lambda: review.predictions_shown > 0, 60)  # stored and on screen
    times = {"at_once": [], "after_a_look": []}
    for key in times:
        for _ in range(5):
            if key == "after_a_look":
                idle(app, 0.5)  # a clinician looks at a slice before accepting it
            z0 = review._z
            t0 = time.perf_counter()
            review.accept_slice()
            wait_until(app, lambda z0=z0: review._z != z0, 30)
            times[key].append(round(1000 * (time.perf_counter() - t0), 1))
    return times


def _box_latency(app, review, case, probe: StallProbe, results: dict) -> None:
    """The box tools with LiteMedSAM (Review dock): ms from letting go of a box (dragged for 0.3 s) to its
    mask on screen, on a slice not seen before (its embedding computed then) and once the embedding is
    cached; Propagate over 10 slices; the longest event-loop stall during each."""
    from napari_gitseg.classes import LABEL_VALUES
    from napari_gitseg.review.boxes import mask_box
    from napari_gitseg.review.propagate import PropagationConfig

    stomach = case.masks[list(case.classes).index("stomach")]
    zs = [int(z) for z in np.nonzero(stomach.sum(axis=(1, 2)) > 200)[0]]
    review.select_organ("stomach")
    review.toggle_box_mode()  # imports the model package here, on the GUI thread; loads nothing yet
    review._boxes.submit(lambda: review._boxes.segmenter.model).result()  # the weights, once (not timed)
    rows = {"box_first_ms": [], "box_cached_at_once_ms": [], "box_cached_ms": []}
    for z in zs[len(zs) // 4 :: max(3, len(zs) // 6)][:3]:  # 3 apart at least: not computed ahead as a neighbour
        box = mask_box(stomach[z]).grown(3, stomach.shape[1:])
        corners = ((box.y0, box.x0), (box.y1 - 1, box.x1 - 1))
        for key in rows:
            _goto_slice(app, review, z)
            if key != "box_first_ms":
                wait_until(app, lambda z=z: (review.session.name, z) in review._boxes.segmenter.cache, 120)
                idle(app, 0.5)
            shown, computed = review.box_results, []
            probe.start()
            if key == "box_cached_at_once_ms":  # the baseline: a box with no drag before it (draw_box)
                t0 = time.perf_counter()
                review.draw_box(*corners).add_done_callback(lambda _f, c=computed: c.append(time.perf_counter()))
            else:
                t0 = _drag_box(app, review, z, corners, computed)
            wait_until(app, lambda shown=shown: review.box_results > shown, 120)
            ms = round(1000 * (time.perf_counter() - t0), 1)
            wait_until(app, lambda c=computed: bool(c), 10)  # the timing callback may run after the display
            rows[key].append({"ms": ms, "computed_ms": round(1000 * (computed[0] - t0), 1), **probe.stop()})
            review.labels_layer.undo()
            idle(app, 0.3)
    results.update(rows)
    z = zs[len(zs) // 3]
    _goto_slice(app, review, z)
    wait_until(app, lambda: (review.labels_layer.data[z] == LABEL_VALUES["stomach"]).any(), 10)
    review.propagation = PropagationConfig(max_slices=10)
    review._direction.value = 1
    probe.start()
    t0 = time.perf_counter()
    review.propagate()
    wait_until(app, lambda: review._propagation.done() and bool(review._fills), 600)
    results["propagate_10"] = {
        "seconds": round(time.perf_counter() - t0, 1),
        "slices": len(review._fills[-1].propagated),
        **probe.stop(),
    }
    review.toggle_box_mode()


def _drag_box(app, review, z: int, corners, computed: list, seconds: float = 0.3) -> float:
    """Drag a box as a hand would (press, ``seconds`` of moves, release) through the Review dock's own drag
    callback (``screenshot_box.drag``); returns the time of the release (the latency a user feels runs
    from there). ``computed`` gets the time the mask was computed."""
    from screenshot_box import drag

    worker = review._boxes
    submit = worker.submit

    def spy(*args, **kwargs):  # the box job's future, to time the computation apart from its display
        fut = submit(*args, **kwargs)
        fut.add_done_callback(lambda _f: computed.append(time.perf_counter()))
        return fut

    worker.submit = spy  # a drag submits one job, at its release
    try:
        moves = max(1, int(seconds / 0.05))  # a move every 50 ms, the rectangle drawn each time
        return drag(review.labels_layer, review, z, *corners, moves=moves, between=lambda: idle(app, 0.05))
    finally:
        del worker.submit


def _goto_slice(app, review, z: int) -> None:
    step = list(review._viewer.dims.current_step)
    step[0] = z
    review._viewer.dims.current_step = tuple(step)
    wait_until(app, lambda: review._z == z, 30)


def _print_boxes(results: dict) -> None:
    for key, what in (
        ("box_first_ms", "box let go -> mask on screen, first box on a new slice (embedding computed then)"),
        ("box_cached_at_once_ms", "box -> mask on screen, embedding cached, no drag before (baseline)"),
        ("box_cached_ms", "box let go after a 0.3 s drag -> mask on screen, embedding cached"),
    ):
        if key in results:
            times = [r["ms"] for r in results[key]]
            computed = [r["computed_ms"] for r in results[key]]
            stall = max(r["max_ms"] for r in results[key])
            print(
                f"{what}: {times} ms (median {np.median(times):.0f} ms; the mask computed after {computed} ms); "
                f"max stall {stall:.1f} ms"
            )
    if results.get("box_cached_ms") and results.get("box_cached_at_once_ms"):
        dragged, at_once = (
            np.median([r["ms"] for r in results[k]]) for k in ("box_cached_ms", "box_cached_at_once_ms")
        )
        print(f"cached box, dragged / at once: {dragged / at_once:.2f}x (the embeddings ahead pause during the drag)")
    if "propagate_10" in results:
        r = results["propagate_10"]
        print(
            f"propagate {r['slices']} slices: {r['seconds']} s; max stall {r['max_ms']:.1f} ms (p99 {r['p99_ms']:.1f})"
        )


def _print_results(results: dict, train, n_slices: int) -> None:
    base = results["idle"]["max_ms"]
    print(f"idle baseline: max stall {base:.1f} ms (p99 {results['idle']['p99_ms']:.1f} ms)")
    print(f"napari alone, adding its first labels layer of this size: {results['napari_first_labels_layer_ms']:.0f} ms")
    floor = results["napari_refresh"]
    print(
        f"napari alone, redrawing a refreshed labels slice: max stall {floor['max_ms']:.1f} ms "
        f"(p99 {floor['p99_ms']:.1f} ms): the floor of any step that shows a new result"
    )
    for key in ("predict_cold", "predict", "train_round"):
        if key in results:
            r = results[key]
            print(
                f"{key}: max stall {r['max_ms']:.1f} ms (p99 {r['p99_ms']:.1f} ms), ratio to idle "
                f"{r['max_ms'] / max(base, 0.1):.1f}x, {r['seconds']:.1f} s, goal < 50 ms: "
                f"{'met' if r['max_ms'] < 50 else 'NOT met'}"
            )
            for line in r.get("why", []):
                print(f"    during the longest stall: {line}")
    accept = results["accept_to_next_ms"]
    print(f"Accept -> next slice shown, accepted as soon as shown: {accept['at_once']} ms")
    print(f"Accept -> next slice shown, accepted after 0.5 s on the slice: {accept['after_a_look']} ms")
    _print_boxes(results)
    import resource

    gui = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    done = [e for e in getattr(train, "events_seen", []) if type(e).__name__ == "Done"]
    worker = done[-1].result.get("worker_peak_rss_mb") if done else None
    print(
        f"peak RSS: napari process (viewing + predicting {n_slices} slices + review + round) {gui:.0f} MB; "
        f"the trainer's worker process {worker if worker is not None else '-'} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--size", type=int, default=266)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-boxes", action="store_true", help="no box-tool rows (LiteMedSAM)")
    parser.add_argument("--skip-predict", action="store_true", help="no Segment rows (one prediction still runs)")
    parser.add_argument("--why", action="store_true", help="print the GUI thread's stacks during each longest stall")
    args = parser.parse_args()

    import napari
    import torch  # noqa: F401  (before Qt, as the app does)
    from qtpy.QtWidgets import QApplication

    from napari_gitseg._widgets.review import ReviewWidget
    from napari_gitseg._widgets.segment import SegmentWidget
    from napari_gitseg._widgets.train import TrainWidget
    from napari_gitseg.layers import image_layer_data
    from napari_gitseg.phantom import make_phantom_case
    from napari_gitseg.resources import default_model_path

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    case = make_phantom_case(seed=11, n_slices=args.slices, size=(args.size, args.size))
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    segment, review, train = SegmentWidget(viewer), ReviewWidget(viewer), TrainWidget(viewer)
    for w, name in ((segment, "Segment"), (review, "Review"), (train, "Train")):
        viewer.window.add_dock_widget(w, name=name)
    model = default_model_path()
    if model is None:
        raise SystemExit("no default model in resources/models: run benchmarks/train_default_model.sh first")
    segment.set_model_path(model)
    probe = StallProbe()
    sampler = StackSampler() if args.why else None
    results = {}

    idle(app, 2.0)  # the window's first draws
    probe.start()
    idle(app, 3.0)
    results["idle"] = probe.stop()
    _napari_floor(app, viewer, case, kwargs, probe, results)
    for key in ("predict_cold",) if args.skip_predict else ("predict_cold", "predict"):  # cold: first model load
        probe.start()
        t0 = time.perf_counter()
        segment.run()
        wait_until(app, lambda: not segment.running, 600)
        results[key] = {**probe.stop(), "seconds": time.perf_counter() - t0}
        if sampler:
            results[key]["why"] = sampler.report(probe.longest())
        idle(app, 1.0)
    project = Path(tempfile.mkdtemp()) / "proj"
    results["accept_to_next_ms"] = _accept_times(app, review, segment, case, project)
    if not args.skip_boxes and review.box_unavailable is None:
        _box_latency(app, review, case, probe, results)
    if not args.skip_train:
        train.set_project(str(project))
        train._preset.value = "quick"
        probe.start()
        t0 = time.perf_counter()
        train.retrain()
        wait_until(app, lambda: not train.running, 900)
        results["train_round"] = {**probe.stop(), "seconds": time.perf_counter() - t0, "events": len(train.events_seen)}
        if sampler:
            results["train_round"]["why"] = sampler.report(probe.longest())
    if sampler:
        sampler.stop()
    review.close_review()
    viewer.close()
    _print_results(results, train, args.slices)


if __name__ == "__main__":
    main()
