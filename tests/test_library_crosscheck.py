"""Hand-written pieces cross-checked against kept libraries: the probe metrics against torchmetrics on random inputs
(ignore labels and absent classes included: top-k accuracy, the segmentation confusion matrix, per-class IoU / mIoU,
pixel accuracy, mean class accuracy, depth RMSE / MAE / AbsRel under pixel pooling) and the cosine schedule against
timm's. Why these stay hand-written: docs/handwritten.md."""

from __future__ import annotations

import math

import pytest
import torch

from mdistiller.eval.metrics import ConfusionMatrix, DepthMetrics, accuracy

tm = pytest.importorskip("torchmetrics.functional.classification")
tmr = pytest.importorskip("torchmetrics.functional.regression")


@pytest.mark.parametrize("num_classes", [5, 100])
def test_topk_accuracy_matches_torchmetrics(num_classes: int) -> None:
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(257, num_classes, generator=g)
    target = torch.randint(0, num_classes, (257,), generator=g)
    ours = accuracy(logits, target, ks=(1, 5))
    for k in (1, 5):
        ref = tm.multiclass_accuracy(logits, target, num_classes=num_classes, top_k=k, average="micro")
        assert ours[k] == pytest.approx(100.0 * float(ref), abs=1e-4), k  # torchmetrics: float32


def test_segmentation_metrics_match_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    c, ignore = 6, 255
    target = torch.randint(0, c - 1, (4, 17, 23), generator=g)  # class c-1 never in the targets
    target[:, :3] = ignore  # ignored rows
    pred = torch.randint(0, c - 2, (4, 17, 23), generator=g)  # classes c-2 and c-1 never predicted
    cm = ConfusionMatrix(c, ignore_index=ignore)
    cm.update(pred, target)
    ref_cm = tm.multiclass_confusion_matrix(pred, target, num_classes=c, ignore_index=ignore)
    assert torch.equal(cm.mat.long(), ref_cm.long())  # rows: target, columns: prediction
    iou = cm.iou_per_class()
    ref_iou = tm.multiclass_jaccard_index(pred, target, num_classes=c, ignore_index=ignore, average=None)
    present = ~iou.isnan()  # ours: NaN for a class absent from targets and predictions (left out of the mean)
    assert not bool(present[c - 1])
    torch.testing.assert_close(iou[present].float(), ref_iou[present].float())
    assert cm.miou() == pytest.approx(float(ref_iou[present].mean()), abs=1e-6)
    pix = tm.multiclass_accuracy(pred, target, num_classes=c, ignore_index=ignore, average="micro")
    assert cm.pixel_accuracy() == pytest.approx(float(pix), abs=1e-6)
    macc = tm.multiclass_recall(pred, target, num_classes=c, ignore_index=ignore, average=None)
    rows = ref_cm.sum(1) > 0
    assert cm.mean_class_accuracy() == pytest.approx(float(macc[rows].mean()), abs=1e-6)


def test_depth_errors_match_torchmetrics() -> None:
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(3, 12, 16, generator=g) * 9 + 0.5
    gt[0, :2] = 0.0  # invalid ground truth: not scored
    pred = (gt + torch.randn(gt.shape, generator=g) * 0.3).clamp(0.1, 9.9)
    m = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    m.update(pred, gt)
    res = m.compute()
    valid = gt > 1e-3
    p, t = pred[valid].double(), gt[valid].double()
    assert res["rmse"] == pytest.approx(float(tmr.mean_squared_error(p, t, squared=False)), rel=1e-9)
    assert res["mae"] == pytest.approx(float(tmr.mean_absolute_error(p, t)), rel=1e-9)
    rel = float(((p - t).abs() / t).mean())
    assert res["abs_rel"] == pytest.approx(rel, rel=1e-9) and math.isfinite(res["d1"])


def test_cosine_schedule_matches_timm_after_warmup() -> None:
    """The per-iteration cosine equals timm's CosineLRScheduler (per update, warm-up as a prefix) at every step after
    the warm-up; the warm-up itself stays hand-written on purpose (docs/handwritten.md)."""
    from timm.scheduler import CosineLRScheduler

    from mdistiller.engine.optim import IterationScheduler

    base, final, total, warm = 1e-3, 1e-6, 50, 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = IterationScheduler(opt, base, total, warmup_steps=warm, schedule="cosine", final_lr=final)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ref = CosineLRScheduler(opt2, t_initial=total - warm, lr_min=final, warmup_t=warm, warmup_lr_init=0.0,
                            warmup_prefix=True, t_in_epochs=False)
    for step in range(warm, total + 1):
        ref.step_update(step)  # timm's public per-update API sets the optimizer's lr
        assert ours.lr_at(step) == pytest.approx(opt2.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step


def _settings(opt: torch.optim.Optimizer) -> dict[int, tuple]:
    """Per parameter: (lr, weight decay, betas, eps) of its group."""
    return {id(p): (g["lr"], g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in opt.param_groups
            for p in g["params"]}


@pytest.mark.parametrize("kwargs", [
    {},  # class token + position embedding
    {"reg_tokens": 4, "init_values": 1e-5},  # register tokens and LayerScale gammas (1-D)
    {"class_token": False, "global_pool": "avg", "fc_norm": True},
])
def test_optimizer_groups_match_timm_create_optimizer_v2(kwargs: dict) -> None:
    """For one model the parameter groups and AdamW settings equal timm's ``create_optimizer_v2`` (no decay on 1-D
    parameters, biases and the model's ``no_weight_decay()`` tokens). They stay hand-written because a distiller's
    groups span the student and its adapters with their own rate (next test; docs/handwritten.md)."""
    import timm
    from timm.optim import create_optimizer_v2

    from mdistiller.engine.optim import build_optimizer

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5, **kwargs)
    ours = build_optimizer(model, "adamw", lr=3e-4, weight_decay=0.05)
    ref = create_optimizer_v2(model, "adamw", lr=3e-4, weight_decay=0.05)
    assert type(ours) is type(ref)
    assert _settings(ours) == _settings(ref)
    no_decay = {n for n, p in model.named_parameters() if _settings(ours)[id(p)][1] == 0.0}
    assert {"pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay


def test_distiller_groups_follow_timms_rule_with_the_adapter_rate(make_cfg) -> None:
    """SiNGER's groups: every parameter's weight decay is timm's rule over the trainable modules (student tokens
    exempt as the student's ``no_weight_decay()`` says), and the adapters run at ADAPTER_LR_SCALE × the rate — the
    part ``create_optimizer_v2`` (one model, one rate) cannot express."""
    from timm.optim import param_groups_weight_decay

    from mdistiller.distillers import build_distiller
    from mdistiller.engine.optim import build_optimizer

    d = build_distiller(make_cfg("SiNGER", **{"SiNGER.ADAPTER_LR_SCALE": 10.0}))
    ours = _settings(build_optimizer(d.optimizer_groups(), "adamw", lr=1e-3, weight_decay=0.05))
    exempt = {f"student.model.{n}" for n in d.student.model.no_weight_decay()}
    ref = param_groups_weight_decay(d, weight_decay=0.05, no_weight_decay_list=exempt)
    ref_wd = {id(p): g["weight_decay"] for g in ref for p in g["params"]}
    assert set(ours) == set(ref_wd) and len(ours) == len(d.trainable_parameters())
    adapters = {id(p) for p in d.adapters.parameters()}
    for pid, (lr, wd, _, _) in ours.items():
        assert wd == ref_wd[pid]
        assert lr == pytest.approx(1e-2 if pid in adapters else 1e-3)
