"""The helpers of benchmarks/probe_encoders.py on tiny tensors (the probe itself needs ../shared and ~40 min)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def probe(import_benchmark):
    return import_benchmark("probe_encoders")


def test_volume_dice_pools_every_slice_of_the_volume_per_organ(probe):
    masks = torch.zeros(2, 3, 256, 256)
    masks[0, 0, :128] = 1  # large bowel: half of slice 0
    masks[1, 2, :, :64] = 1  # stomach: a quarter of slice 1; no small bowel anywhere

    class Fixed(torch.nn.Module):
        """Predicts the large bowel everywhere on every slice and nothing else."""

        def forward(self, feats):
            out = torch.full((len(feats), 3, 256, 256), -10.0)
            out[:, 0] = 10.0
            return out

    dice = probe.volume_dice(Fixed(), torch.zeros(2, 1, 4, 4), masks)
    # large bowel: 128 x 256 true pixels inside 2 x 256 x 256 predicted
    assert dice["large_bowel"] == pytest.approx(2 * 128 * 256 / (2 * 256 * 256 + 128 * 256))
    assert dice["stomach"] == 0.0
    assert dice["small_bowel"] != dice["small_bowel"]  # nothing predicted, nothing true: NaN, not counted
    assert dice["mean"] == pytest.approx((dice["large_bowel"] + dice["stomach"]) / 2)


def test_features_are_computed_once_and_reread_from_the_cache(probe, tmp_path):
    calls = []

    def extract(x):
        calls.append(len(x))
        return x.mean(1, keepdim=True).half()

    x = torch.rand(3, 3, 8, 8)
    first, seconds = probe.cached_features(tmp_path / "f.pt", extract, x)
    again, seconds_again = probe.cached_features(tmp_path / "f.pt", extract, x)
    assert calls == [3] and torch.equal(first, again) and seconds_again == pytest.approx(seconds)
    probe.cached_features(tmp_path / "f.pt", extract, torch.rand(5, 3, 8, 8))  # other inputs: computed anew
    assert calls == [3, 5]
