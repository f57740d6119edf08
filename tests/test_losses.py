"""Loss terms against hand-computed values on tiny tensors; weighting, ignoring, spec parsing."""

import math

import pytest
import torch

from training.losses import build_loss, parse_loss_spec

torch.set_num_threads(1)


def _t(values, shape=(1, 1, 2, 2)):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_bce_by_hand():
    logits = _t([0.0, math.log(3.0)], (1, 1, 1, 2))
    target = _t([1.0, 0.0], (1, 1, 1, 2))
    # -log σ(0) = ln 2 ; -log(1 - σ(ln 3)) = -log(1/4) = ln 4 ; mean = 1.5 ln 2
    assert build_loss("bce")(logits, target).item() == pytest.approx(1.5 * math.log(2), rel=1e-5)


def test_bce_sample_weights_and_ignore():
    logits = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(2, 1, 1, 2)
    loss = build_loss("bce")
    ln2 = math.log(2)
    assert loss(logits, target).item() == pytest.approx(ln2, rel=1e-5)
    # half-weight samples give half the loss: sum(w * l) / number of kept elements
    assert loss(logits, target, weight=torch.tensor([0.5, 0.5])).item() == pytest.approx(ln2 / 2, rel=1e-5)
    assert loss(logits, target, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(ln2 / 2, rel=1e-5)
    # an ignored sample leaves the mean over the other sample's elements
    logits2 = torch.tensor([0.0, 0.0, 5.0, 5.0]).reshape(2, 1, 1, 2)
    ignored = loss(logits2, target, ignore=torch.tensor([False, True])).item()
    assert ignored == pytest.approx(ln2, rel=1e-5)
    assert loss(logits2, target).item() > ignored


def test_focal_by_hand():
    # logit 0, target 1: bce ln 2, pt 0.5, (1 - pt)^2 = 0.25 -> 0.25 ln 2 (no alpha)
    loss = build_loss({"focal": 1.0, "focal_gamma": 2.0})
    assert loss(_t([0.0], (1, 1, 1, 1)), _t([1.0], (1, 1, 1, 1))).item() == pytest.approx(0.25 * math.log(2))
    # gamma 0 is plain BCE
    loss0 = build_loss("focal(gamma=0)")
    assert loss0(_t([0.0], (1, 1, 1, 1)), _t([1.0], (1, 1, 1, 1))).item() == pytest.approx(math.log(2))


def test_dice_by_hand_and_perfect_prediction():
    target = _t([1.0, 0.0, 0.0, 0.0])
    # p = 0.5 everywhere: Dice = 2 * 0.5 / (2 + 1) = 1/3 -> loss 2/3
    assert build_loss("dice")(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(2 / 3, rel=1e-5)
    perfect = (target * 2 - 1) * 30.0
    assert build_loss("dice")(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    assert build_loss("dice")(-perfect, target).item() == pytest.approx(1.0, abs=1e-5)


def test_tversky_by_hand_and_equal_to_dice_at_half():
    target = _t([1.0, 0.0, 0.0, 0.0])
    # p = 0.5: TP 0.5, FP 1.5, FN 0.5; α=0.7, β=0.3: T = 0.5 / (0.5 + 1.05 + 0.15) -> loss 1 - 0.5/1.7
    value = build_loss("tversky(alpha=0.7,beta=0.3)")(torch.zeros(1, 1, 2, 2), target).item()
    assert value == pytest.approx(1 - 0.5 / 1.7, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 8, 8, generator=g)
    targets = (torch.rand(3, 3, 8, 8, generator=g) > 0.6).float()
    half = build_loss({"tversky": 1.0, "tversky_alpha": 0.5, "tversky_beta": 0.5})(logits, targets)
    assert half.item() == pytest.approx(build_loss("dice")(logits, targets).item(), rel=1e-5)


def test_jaccard_by_hand():
    target = _t([1.0, 0.0, 0.0, 0.0])
    # p = 0.5: I = 0.5, U = 2 + 1 - 0.5 = 2.5 -> J = 0.2 -> loss 0.8
    assert build_loss("jaccard")(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(0.8, rel=1e-5)


def test_lovasz_by_hand():
    one = _t([1.0], (1, 1, 1, 1))
    # one positive pixel: hinge error 1 - logit * (+1), Lovász gradient 1 -> loss = relu(1 - logit)
    assert build_loss("lovasz")(_t([0.0], (1, 1, 1, 1)), one).item() == pytest.approx(1.0)
    assert build_loss("lovasz")(_t([-1.0], (1, 1, 1, 1)), one).item() == pytest.approx(2.0)
    assert build_loss("lovasz")(_t([2.0], (1, 1, 1, 1)), one).item() == pytest.approx(0.0)


def test_combination_is_the_weighted_sum():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, generator=g)
    target = (torch.rand(2, 3, 6, 6, generator=g) > 0.5).float()
    combined = build_loss("0.3*bce + 0.7*tversky(alpha=0.7, beta=0.3)")
    expected = 0.3 * build_loss("bce")(logits, target) + 0.7 * build_loss("tversky(alpha=0.7,beta=0.3)")(logits, target)
    assert combined(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    total, terms = combined.forward_terms(logits, target)
    assert set(terms) == {"bce", "tversky"}
    assert total.item() == pytest.approx(0.3 * terms["bce"] + 0.7 * terms["tversky"], rel=1e-5)


@pytest.mark.parametrize("term", ["dice", "tversky", "jaccard", "lovasz"])
def test_set_terms_drop_ignored_and_zero_weight_samples(term):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 3, 6, 6, generator=g)
    target = (torch.rand(3, 3, 6, 6, generator=g) > 0.5).float()
    loss = build_loss(term)
    kept = loss(logits[[0, 2]], target[[0, 2]]).item()
    assert loss(logits, target, ignore=torch.tensor([False, True, False])).item() == pytest.approx(kept, rel=1e-5)
    assert loss(logits, target, weight=torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(kept, rel=1e-5)
    assert loss(logits, target).item() != pytest.approx(kept, rel=1e-5)


def test_per_class_ignore_removes_only_that_class():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = (torch.rand(2, 3, 4, 4, generator=g) > 0.5).float()
    ignore = torch.tensor([[False, True, False], [False, False, False]])
    # BCE: the ignored (sample 0, class 1) elements leave the mean
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    keep = ~ignore[:, :, None, None].expand_as(per)
    expected = per[keep].mean().item()
    assert build_loss("bce")(logits, target, ignore=ignore).item() == pytest.approx(expected, rel=1e-5)
    # per-pixel ignore mask of the same content gives the same value
    pixel = ignore[:, :, None, None].expand(2, 3, 4, 4)
    assert build_loss("bce")(logits, target, ignore=pixel).item() == pytest.approx(expected, rel=1e-5)


def test_cls_head_term_by_hand():
    target = torch.zeros(2, 3, 2, 2)
    target[0, 1, 0, 0] = 1.0
    loss = build_loss({"bce": 1.0, "cls": 0.5})
    logits = torch.full((2, 3, 2, 2), -30.0)
    logits[0, 1, 0, 0] = 30.0  # segmentation perfect: bce ~ 0
    cls_logits = torch.zeros(2, 3)  # every "has organ" guess at p = 0.5: BCE ln 2 each
    total, terms = loss.forward_terms(logits, target, cls_logits=cls_logits)
    assert terms["cls"] == pytest.approx(math.log(2), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * math.log(2), rel=1e-4)
    assert loss.needs_cls
    with pytest.raises(ValueError, match="cls_logits"):
        loss(logits, target)


def test_everything_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.ones(2, 3, 4, 4)
    total = build_loss("bce+dice+lovasz")(logits, target, ignore=torch.ones(2, dtype=torch.bool))
    total.backward()
    assert total.item() == 0.0
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_gradient_flows_through_every_term():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, generator=g).requires_grad_()
    target = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    loss = build_loss("bce+focal+dice+tversky+jaccard+lovasz")
    loss(logits, target, weight=torch.tensor([1.0, 0.5])).backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0


def test_spec_forms_agree_and_round_trip():
    as_dict = parse_loss_spec({"bce": 0.5, "tversky": 0.5, "tversky_alpha": 0.7, "tversky_beta": 0.3})
    as_text = parse_loss_spec("0.5*bce+0.5*tversky(alpha=0.7,beta=0.3)")
    assert as_dict == as_text == ({"bce": 0.5, "tversky": 0.5}, {"tversky": {"alpha": 0.7, "beta": 0.3}})
    assert parse_loss_spec("bce + dice")[0] == {"bce": 1.0, "dice": 1.0}
    loss = build_loss(as_dict[0] | {"tversky_alpha": 0.7, "tversky_beta": 0.3})
    rebuilt = build_loss(loss.spec())
    assert rebuilt.weights == loss.weights and rebuilt.settings == loss.settings
    assert build_loss().weights == {"bce": 0.5, "tversky": 0.5}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.5*bce+0.5*softmax", "unknown loss term"),
        ({"bce": 1.0, "tversky_delta": 0.2}, "unknown setting"),
        ({"bce": -1.0}, ">= 0"),
        ("", "empty"),
        ({"bce": 0.0}, "positive weight"),
        ("bce*0.5", "cannot read"),
        ({"dicey": 1.0}, "unknown loss key"),
        (3, "string or a dict"),
    ],
)
def test_bad_specs_are_rejected_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        build_loss(spec)


def test_shape_and_weight_errors():
    loss = build_loss("bce")
    with pytest.raises(ValueError, match="must both be"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="entries"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), weight=torch.ones(3))
    with pytest.raises(ValueError, match="does not fit"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), ignore=torch.zeros(3, dtype=torch.bool))
