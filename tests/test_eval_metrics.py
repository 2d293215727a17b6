"""Evaluation building blocks: every metric against a hand computation, heads for shape and linear algebra."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.eval import (
    ConfusionMatrix,
    DepthHead,
    DepthMetrics,
    LinearHeadGrid,
    SegHead,
    accuracy,
    eigen_crop_box,
    eigen_crop_mask,
    select_best,
    sliding_window_logits,
    tokens_to_grid,
    topk_correct,
)
from mdistiller.eval.heads import _window_starts

# ------------------------------------------------------------------------------------------------
# top-k
# ------------------------------------------------------------------------------------------------


def _topk_case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0 has rank 1
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5],  # target 2 has rank 2
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 5 has rank 6
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1 has rank 5
        ]
    )
    return logits, torch.tensor([0, 2, 5, 1])


def test_topk_correct_counts_by_hand():
    logits, target = _topk_case()
    assert topk_correct(logits, target, ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 3}
    assert topk_correct(logits, target, ks=(10,)) == {10: 4}  # k > C is clamped to C: all correct
    assert accuracy(logits, target) == {1: 25.0, 5: 75.0}
    # counts add up exactly over batches
    a = topk_correct(logits[:2], target[:2])
    b = topk_correct(logits[2:], target[2:])
    assert {k: a[k] + b[k] for k in a} == topk_correct(logits, target)
    assert topk_correct(logits[:0], target[:0]) == {1: 0, 5: 0}


def test_topk_errors():
    logits, target = _topk_case()
    with pytest.raises(ValueError, match="target values"):
        topk_correct(logits, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(TypeError, match="integer"):
        topk_correct(logits, target.float())
    with pytest.raises(ValueError, match=r"\[N\]"):
        topk_correct(logits, target[:3])
    with pytest.raises(ValueError, match="empty"):
        accuracy(logits[:0], target[:0])


# ------------------------------------------------------------------------------------------------
# confusion matrix / mIoU
# ------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_ious():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])  # [1, 2, 3]
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    cm = ConfusionMatrix(4)  # class 3 never appears: excluded from the mean
    cm.update(pred, target)
    # pairs (t, p): (0,0) (0,1) (1,1) (1,1) (2,2); the 255 pixel is ignored
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2] = 1, 1, 2, 1
    assert torch.equal(cm.state(), expected)
    iou = cm.iou_per_class()
    # IoU = TP / (row + col − TP): class 0: 1/(2+1−1), class 1: 2/(2+3−2), class 2: 1/(1+1−1)
    assert iou[:3].tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)
    assert cm.mean_class_accuracy() == pytest.approx((1 / 2 + 1 + 1) / 3)
    out = cm.compute()
    assert out["num_present_classes"] == 3 and out["miou"] == pytest.approx(cm.miou())


def test_confusion_matrix_predicted_but_absent_class_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    # class 0: TP 1, union 2 -> 1/2; class 2 predicted but never in target -> IoU 0 and counted; class 1 absent
    assert cm.miou() == pytest.approx((1 / 2 + 0) / 2)


def test_dataset_level_miou_differs_from_mean_of_batch_mious():
    batches = [
        (torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]])),  # (pred, target): batch mIoU = 1 (class 0 only)
        (torch.tensor([[[0, 1]]]), torch.tensor([[[1, 1]]])),  # IoU0 = 0/1, IoU1 = 1/2 -> batch mIoU = 1/4
    ]
    total, per_batch = ConfusionMatrix(2, ignore_index=-1), []
    for pred, target in batches:
        total.update(pred, target)
        one = ConfusionMatrix(2, ignore_index=-1)
        one.update(pred, target)
        per_batch.append(one.miou())
    assert sum(per_batch) / 2 == pytest.approx(0.625)
    # dataset matrix [[2, 0], [1, 1]]: IoU0 = 2/(2+3−2) = 2/3, IoU1 = 1/(2+1−1) = 1/2
    assert total.miou() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert total.miou() != pytest.approx(sum(per_batch) / 2)


def test_confusion_matrix_merge_and_all_reduce_noop():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (4, 6, 7), generator=g)
    target = torch.randint(0, 5, (4, 6, 7), generator=g)
    target[0, 0] = 255
    whole, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    a.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    assert torch.equal(a.merge(b).all_reduce().state(), whole.state())
    assert int(whole.state().sum()) == 4 * 6 * 7 - 7
    a.merge(torch.ones(5, 5, dtype=torch.int64))
    assert int(a.state().sum()) == int(whole.state().sum()) + 25


def test_confusion_matrix_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="head must have 3 outputs"):
        cm.update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.rand(1, 2), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=1)
    assert math.isnan(ConfusionMatrix(3).miou())


# ------------------------------------------------------------------------------------------------
# depth
# ------------------------------------------------------------------------------------------------


def test_depth_metrics_four_pixels_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 5.0]]])
    pred = torch.tensor([[[1.0, 2.4], [3.0, 10.0]]])
    m = DepthMetrics(max_depth=10.0)
    m.update(pred, gt)
    out = m.compute()
    # errors p − g: 0, 0.4, −1, 5 ; ratios max(p/g, g/p): 1, 1.2, 4/3, 2
    assert out["rmse"] == pytest.approx(math.sqrt((0 + 0.16 + 1 + 25) / 4))
    assert out["abs_rel"] == pytest.approx((0 + 0.4 / 2 + 1 / 4 + 5 / 5) / 4)
    assert out["log10"] == pytest.approx((0 + math.log10(1.2) + math.log10(4 / 3) + math.log10(2)) / 4)
    assert out["sq_rel"] == pytest.approx((0 + 0.16 / 2 + 1 / 4 + 25 / 5) / 4)
    sq_log = 0 + math.log(1.2) ** 2 + math.log(4 / 3) ** 2 + math.log(2) ** 2
    assert out["rmse_log"] == pytest.approx(math.sqrt(sq_log / 4))
    assert out["mae"] == pytest.approx((0 + 0.4 + 1 + 5) / 4)
    assert (out["d1"], out["d2"], out["d3"]) == pytest.approx((2 / 4, 3 / 4, 3 / 4))  # 1.25, 1.5625, 1.953125
    assert out["num_pixels"] == 4
    assert out["aggregation"] == "pixel" and out["eigen_crop"] is False


def test_depth_mask_uses_gt_only_and_clamps_predictions():
    # gt: valid, 0 (invalid), 10 = max (invalid: strict), valid
    gt = torch.tensor([[[2.0, 0.0, 10.0, 3.0]]])
    pred = torch.tensor([[[25.0, float("nan"), float("inf"), -1.0]]])  # out-of-range preds are clamped, still scored
    m = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    m.update(pred, gt)
    out = m.compute()
    assert out["num_pixels"] == 2
    assert out["rmse"] == pytest.approx(math.sqrt(((10 - 2) ** 2 + (1e-3 - 3) ** 2) / 2))
    assert out["abs_rel"] == pytest.approx((8 / 2 + (3 - 1e-3) / 3) / 2)
    assert out["d3"] == 0.0
    # a NaN prediction at a *valid* pixel is not masked away: it shows up
    bad = DepthMetrics()
    bad.update(torch.tensor([[[float("nan")]]]), torch.tensor([[[1.0]]]))
    assert math.isnan(bad.compute()["rmse"])


def test_depth_pixel_vs_image_aggregation():
    gt = torch.tensor([[[2.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])  # 1, 2 and 0 valid pixels
    pred = torch.tensor([[[6.0, 5.0, 5.0]], [[1.0, 1.0, 7.0]], [[3.0, 3.0, 3.0]]])
    px, im = DepthMetrics(aggregate="pixel"), DepthMetrics(aggregate="image")
    px.update(pred, gt)
    im.update(pred[:1], gt[:1])  # split over calls: same sums
    im.update(pred[1:], gt[1:])
    p, i = px.compute(), im.compute()
    # pixel: one error of 4 (|4|/2 = 2 relative) among 3 valid pixels
    assert p["rmse"] == pytest.approx(math.sqrt(16 / 3))
    assert p["abs_rel"] == pytest.approx(2 / 3)
    assert p["d1"] == pytest.approx(2 / 3)
    # image: image 1 has RMSE 4, AbsRel 2, d1 0 ; image 2 has 0, 0, 1 ; image 3 has no valid pixel (skipped)
    assert i["rmse"] == pytest.approx(2.0)
    assert i["abs_rel"] == pytest.approx(1.0)
    assert i["d1"] == pytest.approx(0.5)
    assert i["num_images"] == 2 and i["num_pixels"] == 3 and i["aggregation"] == "image"
    assert p["rmse"] != pytest.approx(i["rmse"])


def test_eigen_crop_exact_pixels():
    mask = eigen_crop_mask(480, 640)
    assert int(mask.sum()) == (471 - 45) * (601 - 41)
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) == (45, 470, 41, 600)
    assert bool(mask[45:471, 41:601].all())
    assert eigen_crop_box(480, 640) == (45, 471, 41, 601)
    assert eigen_crop_box(240, 320) == (23, 236, 21, 301)  # proportional, round half up

    gt = torch.ones(1, 480, 640)
    pred = torch.full_like(gt, 2.0)
    pred[:, 45:471, 41:601] = 1.0  # perfect inside the crop, wrong outside
    cropped, full = DepthMetrics(eigen_crop=True), DepthMetrics(eigen_crop=False)
    cropped.update(pred, gt)
    full.update(pred, gt)
    c = cropped.compute()
    assert c["rmse"] == 0.0 and c["num_pixels"] == 426 * 560 and c["eigen_crop"] is True
    outside = 480 * 640 - 426 * 560
    assert full.compute()["rmse"] == pytest.approx(math.sqrt(outside / (480 * 640)))


def test_depth_merge_and_errors():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(3, 5, 6, generator=g) * 9 + 0.5
    pred = gt + torch.randn(3, 5, 6, generator=g) * 0.3
    for agg in ("pixel", "image"):
        whole, a, b = DepthMetrics(aggregate=agg), DepthMetrics(aggregate=agg), DepthMetrics(aggregate=agg)
        whole.update(pred, gt)
        a.update(pred[:2], gt[:2])
        b.update(pred[2:].unsqueeze(1), gt[2:].unsqueeze(1))  # [B, 1, H, W] is accepted
        assert torch.allclose(a.merge(b).all_reduce().state(), whole.state())
    with pytest.raises(ValueError, match="equal settings"):
        DepthMetrics().merge(DepthMetrics(eigen_crop=True))
    with pytest.raises(ValueError, match="no valid"):
        DepthMetrics().compute()
    with pytest.raises(ValueError, match="resize the prediction"):
        DepthMetrics().update(torch.ones(1, 4, 4), torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="aggregate"):
        DepthMetrics(aggregate="mean")


# ------------------------------------------------------------------------------------------------
# classification heads
# ------------------------------------------------------------------------------------------------


def test_linear_head_init_and_shape():
    torch.manual_seed(0)
    grid = LinearHeadGrid(256, 100, [0.1])
    assert grid(torch.randn(3, 256))["lr_0.1"].shape == (3, 100)
    assert torch.count_nonzero(grid.biases[0]) == 0
    assert float(grid.weights[0].detach().std()) == pytest.approx(0.01, rel=0.05)


def test_linear_head_grid_matches_separate_heads_and_groups():
    torch.manual_seed(0)
    lrs = [1e-3, 1e-2, 0.1]
    grid = LinearHeadGrid(8, 5, lrs)
    assert grid.names == ["lr_0.001", "lr_0.01", "lr_0.1"]
    x, y = torch.randn(7, 8), torch.randint(0, 5, (7,))
    out = grid(x)
    assert grid.forward_stacked(x).shape == (7, 3, 5)
    for k, name in enumerate(grid.names):
        lin = nn.Linear(8, 5)
        with torch.no_grad():
            lin.weight.copy_(grid.weights[k])
            lin.bias.copy_(grid.biases[k])
        assert torch.allclose(out[name], lin(x), atol=1e-6)
    groups = grid.param_groups(lr_scale=2.0, weight_decay=0.0)
    assert [g["lr"] for g in groups] == pytest.approx([2 * lr for lr in lrs])
    assert [g["name"] for g in groups] == grid.names
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in grid.parameters()) and len(set(ids)) == len(ids)
    # one loss for all heads = sum of the separate cross-entropies, in both forms
    separate = sum(F.cross_entropy(v, y) for v in out.values())
    assert torch.allclose(grid.loss(grid.forward_stacked(x), y), separate, atol=1e-6)
    assert torch.allclose(grid.loss(out, y), separate, atol=1e-6)
    assert grid.lr_of("lr_0.01") == 0.01
    with pytest.raises(ValueError, match="unique"):
        LinearHeadGrid(8, 5, [0.1, 0.1])
    with pytest.raises(ValueError, match="positive"):
        LinearHeadGrid(8, 5, [0.1, -1.0])
    with pytest.raises(KeyError, match="valid names"):
        grid.lr_of("lr_7")


def test_linear_head_grid_learns_separable_toy_problem():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 4.0
    y = torch.arange(4).repeat(50)
    x = centres[y] + 0.3 * torch.randn(200, 16, generator=g)
    torch.manual_seed(0)
    grid = LinearHeadGrid(16, 4, [1e-4, 0.1, 1.0])
    opt = torch.optim.SGD(grid.param_groups(), momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        grid.loss(grid.forward_stacked(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = {name: float((logits.argmax(1) == y).float().mean()) for name, logits in grid(x).items()}
    assert acc["lr_0.1"] >= 0.95
    best = grid.best(acc)
    assert acc[best] >= 0.95
    assert select_best({"a": float("nan"), "b": 0.2, "c": 0.1}, higher_is_better=False) == "c"
    with pytest.raises(ValueError, match="finite"):
        select_best({"a": float("nan")})


# ------------------------------------------------------------------------------------------------
# segmentation head
# ------------------------------------------------------------------------------------------------


def test_tokens_to_grid_layout():
    tokens = torch.randn(2, 6, 3)
    grid = tokens_to_grid(tokens, (2, 3))
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 1 * 3 + 2])
    assert tokens_to_grid(torch.randn(1, 16, 5)).shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.randn(1, 17, 5))


def test_seg_head_upsample_after_equals_before_in_eval():
    torch.manual_seed(0)
    head = SegHead(6, 4)
    with torch.no_grad():  # non-trivial BN statistics and affine, non-zero conv bias
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.normal_()
        head.bn.bias.normal_()
        head.conv.bias.normal_()
    head.eval()
    x = torch.randn(2, 6, 3, 5)
    after = head(x, (12, 20))
    before = head.conv(head.bn(F.interpolate(x, size=(12, 20), mode="bilinear", align_corners=False)))
    assert after.shape == (2, 4, 12, 20)
    assert torch.allclose(after, before, atol=1e-5)
    assert head(x).shape == (2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 12, 20))
    target[0] = 255
    assert head.loss(after, target).ndim == 0
    assert head.loss(after, torch.full_like(target, 255)).item() == 0.0
    with pytest.raises(ValueError, match="tokens_to_grid"):
        head(torch.randn(2, 5, 3, 5))


def test_window_starts_follow_mmseg_slide():
    assert _window_starts(10, 4, 3) == [0, 3, 6]
    assert _window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert _window_starts(4, 4, 2) == [0]
    assert _window_starts(3, 4, 2) == [0]


def test_sliding_window_single_pass_and_averaging():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1)
    image = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        single = conv(image)
        # window = image size: exactly one pass
        assert torch.equal(sliding_window_logits(conv, image, (8, 12), (8, 12), 5), single)
        # a pointwise fn gives the same logits whatever the overlap; batching windows changes nothing
        a = sliding_window_logits(conv, image, 5, 3, 5)
        b = sliding_window_logits(conv, image, 5, 3, 5, windows_per_call=4)
        assert torch.allclose(a, single, atol=1e-6) and torch.allclose(b, a, atol=1e-6)
        # window larger than the image: one smaller crop
        assert torch.allclose(sliding_window_logits(conv, image, 16, 8, 5), single, atol=1e-6)

    # hand case: width 6, window 4, stride 2 -> windows at x = 0 and 2; each returns its top-left pixel value
    img = torch.arange(6.0).expand(1, 1, 4, 6).contiguous()
    out = sliding_window_logits(lambda c: c[:, :1, :1, :1].expand(-1, 1, *c.shape[-2:]), img, 4, 2, 1)
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="uncovered"):
        sliding_window_logits(conv, image, 4, 5, 5)
    with pytest.raises(ValueError, match="crop size"):
        sliding_window_logits(lambda c: c[:, :, ::2, ::2], image, 4, 4, 3)


# ------------------------------------------------------------------------------------------------
# depth head
# ------------------------------------------------------------------------------------------------


def test_depth_head_shapes_and_cls_concat():
    torch.manual_seed(0)
    head = DepthHead(6, n_bins=16, min_depth=0.5, max_depth=8.0).eval()
    assert head.conv.in_channels == 12
    patch, cls = torch.randn(2, 6, 3, 4), torch.randn(2, 6)
    depth = head(patch, cls, out_size=(12, 16)).detach()
    assert depth.shape == (2, 12, 16)
    assert float(depth.min()) >= 0.5 and float(depth.max()) <= 8.0
    # CLS is broadcast over the grid and concatenated after the patch channels
    cat = torch.cat([patch, cls[:, :, None, None].expand(2, 6, 3, 4)], dim=1)
    assert torch.allclose(head.logits(patch, cls), head.conv(head.bn(cat)), atol=1e-6)
    with pytest.raises(ValueError, match="use_cls"):
        head(patch)
    no_cls = DepthHead(6, use_cls=False)
    assert no_cls.conv.in_channels == 6 and no_cls(patch, out_size=8).shape == (2, 8, 8)


def test_depth_head_bins_decode_and_losses():
    head = DepthHead(4, n_bins=256, min_depth=1e-3, max_depth=10.0)
    centres = head.bin_centers
    assert float(centres[0]) == pytest.approx(1e-3) and float(centres[-1]) == pytest.approx(10.0)
    assert torch.equal(head.bin_index(centres), torch.arange(256))
    # one-hot-ish logits decode to the bin centre
    for i in (0, 17, 128, 255):
        logits = torch.zeros(1, 256, 1, 1)
        logits[0, i] = 100.0
        assert float(head.decode(logits)) == pytest.approx(float(centres[i]), abs=1e-4)
    # uniform logits decode to the mean centre, whatever the temperature
    flat = torch.zeros(1, 256, 2, 2)
    assert torch.allclose(head.decode(flat, temperature=0.1), torch.full((1, 2, 2), (1e-3 + 10.0) / 2), atol=1e-4)

    gt = torch.tensor([[[1.0, 2.0], [0.0, 12.0]]])  # two valid pixels, two invalid
    flat.requires_grad_(True)
    ce = head.loss(flat, gt)
    assert ce.item() == pytest.approx(math.log(256), rel=1e-6)  # CE of a uniform distribution
    ce.backward()
    assert flat.grad is not None
    l1 = DepthHead(4, n_bins=256, bins_loss="l1").loss(torch.zeros(1, 256, 2, 2), gt)
    mid = (1e-3 + 10.0) / 2
    assert float(l1) == pytest.approx((abs(mid - 1.0) + abs(mid - 2.0)) / 2, rel=1e-5)
    # invalid gt pixels do not matter
    gt2 = gt.clone()
    gt2[0, 1] = torch.tensor([-5.0, 99.0])
    assert head.loss(torch.zeros(1, 256, 2, 2), gt2).item() == pytest.approx(ce.item())
    zero = head.loss(torch.zeros(1, 256, 2, 2, requires_grad=True), torch.zeros(1, 2, 2))
    assert zero.item() == 0.0 and zero.requires_grad


def test_depth_head_regression_mode():
    head = DepthHead(4, mode="regression", min_depth=0.0, max_depth=10.0, use_cls=False)
    assert head.conv.out_channels == 1
    logits = torch.zeros(1, 1, 2, 2)
    assert torch.allclose(head.decode(logits), torch.full((1, 2, 2), 5.0))
    gt = torch.tensor([[[4.0, 7.0], [5.0, 0.0]]])  # last pixel invalid (not > min)
    assert head.loss(logits, gt).item() == pytest.approx((1 + 2 + 0) / 3)
    with pytest.raises(ValueError, match="mode"):
        DepthHead(4, mode="log")
