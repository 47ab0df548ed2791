"""Tests of the segmentation U-Net, its task and metrics, and the U-Net inspection tools."""
from __future__ import annotations

import pytest
import torch

from ddpm_core import segmentation as seg
from ddpm_core import unet


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the network

@pytest.mark.parametrize("skips", [True, False])
def test_same_padding_keeps_the_image_size_and_gives_one_logit_per_class(skips):
    net = seg.SegmentationUNet(in_channels=1, num_classes=3, base_channels=4, depth=2, skips=skips)
    out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3, 28, 28)


def test_skips_feed_the_expanding_path_twice_the_channels():
    with_skips = seg.SegmentationUNet(base_channels=4, depth=2)
    without = seg.SegmentationUNet(base_channels=4, depth=2, skips=False)
    assert [b[0].in_channels for b in with_skips.up] == [16, 8]
    assert [b[0].in_channels for b in without.up] == [8, 4]


def test_valid_padding_reproduces_the_paper_sizes_572_to_388():
    assert seg.output_size(572, depth=4, padding="valid") == 388
    net = seg.SegmentationUNet(base_channels=1, depth=4, padding="valid")
    with torch.no_grad():
        out = net(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_paper_sized_network_has_the_widths_of_figure_1():
    net = seg.SegmentationUNet(base_channels=64, depth=4, padding="valid")
    assert net.bottom[2].out_channels == 1024
    assert [b[0].out_channels for b in net.down] == [64, 128, 256, 512]


def test_sizes_that_a_pooling_cannot_halve_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="even"):
        seg.output_size(30, depth=2)
    with pytest.raises(ValueError, match="even"):
        seg.SegmentationUNet(depth=2)(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="padding"):
        seg.SegmentationUNet(padding="reflect")


# ----------------------------------------------------------------------------- metrics

def test_iou_and_dice_match_hand_computed_cases():
    pred = torch.tensor([[1, 1, 0], [0, 0, 0]])
    target = torch.tensor([[1, 0, 0], [1, 0, 0]])
    # intersection 1, union 3, |P| + |T| = 4
    assert seg.iou(pred, target).item() == pytest.approx(1 / 3)
    assert seg.dice(pred, target).item() == pytest.approx(0.5)
    empty = torch.zeros(2, 3, dtype=torch.long)
    assert seg.iou(empty, empty).item() == 1.0 and seg.dice(empty, empty).item() == 1.0
    assert seg.iou(pred, 1 - pred).item() == 0.0 and seg.dice(pred, 1 - pred).item() == 0.0
    assert seg.iou(target, target).item() == 1.0


def test_metrics_are_per_mask_on_a_batch_and_dice_is_a_function_of_iou():
    g = torch.Generator().manual_seed(0)
    pred, target = (torch.rand(5, 8, 8, generator=g) > 0.5 for _ in range(2))
    j, d = seg.iou(pred, target), seg.dice(pred, target)
    assert j.shape == d.shape == (5,)
    assert torch.allclose(d, 2 * j / (1 + j))
    assert torch.allclose(j[2], seg.iou(pred[2], target[2]))
    with pytest.raises(ValueError, match="same shape"):
        seg.iou(pred, target[:, :4])


# ----------------------------------------------------------------------------- the task

def test_task_is_deterministic_with_binary_masks_of_the_digit():
    a, b = seg.scratched_digits("test", n=16), seg.scratched_digits("test", n=16)
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask)
    assert a.mask.dtype == torch.long and set(a.mask.unique().tolist()) <= {0, 1}
    assert a.x.shape == (16, 1, 28, 28) and a.mask.shape == (16, 28, 28)
    assert a.x.min() >= -1 and a.x.max() <= 1
    assert torch.equal(a.mask, ((a.clean[:, 0] + 1) / 2 > 0.5).long())
    assert a.scratches.amax(dim=(1, 2, 3)).min() > 0.5  # every image is scratched
    train = seg.scratched_digits("train", n=16)
    assert not torch.equal(train.x, a.x)


def test_without_scratches_and_noise_the_input_is_the_digit():
    clean = seg.scratched_digits("test", n=4, scratches=0, noise_std=0.0)
    assert torch.allclose(clean.x, clean.clean, atol=1e-6)


def test_a_few_training_steps_reduce_the_loss():
    data = seg.scratched_digits("train", n=128)
    torch.manual_seed(0)
    net = seg.SegmentationUNet(base_channels=8)
    losses = seg.train_segmentation(net, data, steps=30, batch_size=16, lr=3e-3)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses
    scores = seg.evaluate(net, seg.scratched_digits("test", n=32))
    assert set(scores) == {"iou", "dice", "pixel_accuracy"} and 0 <= scores["iou"] <= scores["dice"] <= 1


# ----------------------------------------------------------------------------- inspection

def test_measured_receptive_field_equals_the_analytic_one():
    torch.manual_seed(0)
    net = seg.randomize_weights_(seg.SegmentationUNet(base_channels=4, depth=1), seed=0)
    assert net.receptive_field() == 18  # 2 convs, pool, 2 convs at stride 2, up-conv, 2 convs
    x = torch.randn(32, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    extent = seg.receptive_field_extent(seg.input_gradient_map(net, x, (20, 20)))
    assert extent["height"] == extent["width"] == 18


def test_chain_receptive_field_formula():
    assert seg.chain_receptive_field([(3, 1)] * 2) == 5
    assert seg.chain_receptive_field([(3, 1), (2, 2), (3, 1)]) == 1 + 2 + 1 + 4
    assert seg.chain_receptive_field([(3, 2), (2, 0.5), (3, 1)]) == 1 + 2 + 0 + 2


def test_ddpm_unet_input_gradient_is_zero_until_the_weights_are_randomized():
    net = unet.UNet.from_preset("cpu-digits")  # zero-initialised output conv: the gradient is exactly 0
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    assert seg.input_gradient_map(net, x, (0, 0), t).abs().max() == 0
    seg.randomize_weights_(net, seed=0)
    assert seg.receptive_field_extent(seg.input_gradient_map(net, x, (0, 0), t))["coverage"] == 1.0
    assert net.training  # the mode is restored


def test_parameter_table_covers_every_parameter_and_trace_follows_the_u():
    net = unet.UNet.from_preset("cpu-mnist")
    rows = seg.unet_parameter_table(net)
    assert sum(r["parameters"] for r in rows) == unet.count_parameters(net)
    # labels as the book prints them: the typographic signs, not ASCII stand-ins
    assert [r["component"] for r in rows[:2]] == ["sinusoid → MLP", "3×3 conv"]
    assert rows[-1]["component"] == "GroupNorm, SiLU, 3×3 conv" and rows[0]["resolution"] is None
    assert {(r["stage"], r["resolution"]) for r in rows if r["component"] == "attention"} == {
        ("down", 7), ("middle", 7), ("up", 7)}
    trace = seg.trace_shapes(net, torch.randn(1, 1, 28, 28), torch.tensor([10]))
    assert trace[0]["name"] == "conv_in" and trace[-1]["name"] == "conv_out"
    assert trace[-1]["output"] == (1, 1, 28, 28)
    sides = [r["output"][-1] for r in trace]
    assert sides[0] == sides[-1] == 28 and min(sides) == 7
    ups = [r for r in trace if r["name"].startswith("up.") and r["type"] == "ResBlock"]
    assert all(r["input"][1] > r["output"][1] for r in ups)  # the concatenated skip widens the input
