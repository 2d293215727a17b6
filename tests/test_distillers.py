"""Each distiller: forward + backward, gradients reach every trainable parameter and never the teacher."""

from __future__ import annotations

import pytest
import torch

from mdistiller.distillers import SiNGER, build_distiller
from mdistiller.singer import linearize_ffn, null_basis

KINDS = ["FitNet", "ViTKD", "SiNGER"]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_gradients(kind, make_cfg):
    d = build_distiller(make_cfg(kind))
    d.train()
    out = d(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    trainable = d.trainable_parameters()
    assert trainable, "no trainable parameters"
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    # the teacher is frozen for real: no parameter wants or received a gradient, and it stays in eval mode
    assert all(not p.requires_grad and p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training and not d.teacher.net.model.training
    # and it is not part of the module tree (so not in DDP, the optimizer or a checkpoint)
    assert not any(k.startswith("teacher") for k in d.state_dict())
    assert d.student.training


def test_vitkd_trains_generator_mask_token_and_aligners(make_cfg):
    d = build_distiller(make_cfg("ViTKD"))
    names = {n for n, _ in d.trainable_parameters()}
    assert "mask_token" in names
    assert any(n.startswith("generator.") for n in names)
    assert {"proj.0.weight", "proj.1.weight", "proj.3.weight"} <= names  # two mimic aligners + generation aligner
    assert "student.model.norm.weight" in names  # generation reads the student after its final norm


def test_fitnet_and_singer_use_same_layers_and_freeze_unused_student_norm(make_cfg):
    f, s = build_distiller(make_cfg("FitNet")), build_distiller(make_cfg("SiNGER"))
    assert f.plan.teacher == s.plan.teacher == [1, 3] and f.plan.student == s.plan.student == [1, 2]
    assert not s.student.model.norm.weight.requires_grad


def test_singer_adapters_start_from_next_block_nullspace(make_cfg):
    d = build_distiller(make_cfg("SiNGER"))
    assert isinstance(d, SiNGER)
    w_next = linearize_ffn(d.teacher.blocks[2])  # intermediate layer 1 → block 2's FFN
    torch.testing.assert_close(d.adapters["1"].down, null_basis(w_next, 8))
    w_own = linearize_ffn(d.teacher.blocks[3])  # final layer 3 → its own FFN (documented)
    torch.testing.assert_close(d.adapters["3"].down, null_basis(w_own, 8))


def test_singer_info_reuses_teacher_pass_and_only_adapter_gets_info_gradient(make_cfg, monkeypatch):
    d = build_distiller(make_cfg("SiNGER"))
    calls = []
    block = d.teacher.blocks[2]
    orig = block.forward
    monkeypatch.setattr(block, "forward", lambda x, *a, **k: calls.append(x.requires_grad) or orig(x, *a, **k))
    out = d(torch.rand(2, 3, 32, 32))
    # block l+1 runs once in the teacher pass (no grad) and once on the refined features (grad): never recomputed
    assert calls == [False, True]
    d.zero_grad()
    info_only = out["loss"] - out["loss_kd"] - out["loss_outlier"]  # detached terms: graph = λ_info · L_info
    assert info_only.requires_grad
    (d.weights["info"] * d.reduce_layers([d.info_term(1, *_layer1(d))])).backward()
    grads = {n for n, p in d.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("adapters.1.") for n in grads)


def _layer1(d):
    x = torch.rand(2, 3, 32, 32)
    sgrid = d.student_grid(x)
    t_feats, tgrid = d.teacher(x, d.teacher_request(), student_grid=sgrid)
    refined = d.refine(t_feats, tgrid)
    split, f_hat = refined[1]
    return split, f_hat, t_feats, tgrid, refined


def test_singer_info_fraction_reruns_block_on_batch_subset_only(make_cfg, monkeypatch):
    """Opt-in INFO_FRACTION: block l+1 re-runs on the first ceil(f·B) images; the term equals eq. 11 on those."""
    full = build_distiller(make_cfg("SiNGER"))
    half = build_distiller(make_cfg("SiNGER", **{"SiNGER.INFO_FRACTION": 0.4}))
    half.load_state_dict(full.state_dict())
    half.teacher.net.model.load_state_dict(full.teacher.net.model.state_dict())  # the teacher is outside the tree
    x = torch.rand(5, 3, 32, 32)
    shapes = []
    block = half.teacher.blocks[2]
    orig = block.forward
    monkeypatch.setattr(block, "forward", lambda h, *a, **k: shapes.append(h.shape[0]) or orig(h, *a, **k))
    terms = {}
    for name, d, images in (("half", half, x), ("full_on_subset", full, x[:2])):
        sgrid = d.student_grid(images)
        t_feats, tgrid = d.teacher(images, d.teacher_request(), student_grid=sgrid)
        refined = d.refine(t_feats, tgrid)
        terms[name] = d.info_term(1, *refined[1], t_feats, tgrid, refined)
    assert shapes == [5, 2]  # teacher pass on all 5 images, L_info re-run on ceil(0.4 · 5) = 2
    torch.testing.assert_close(terms["half"], terms["full_on_subset"])
    assert half.info_batch(1) == 1 and full.info_batch(7) == 7
    with pytest.raises(ValueError, match="INFO_FRACTION|info_fraction"):
        build_distiller(make_cfg("SiNGER", **{"SiNGER.INFO_FRACTION": 0.0}))


@pytest.mark.parametrize("opts", [{"SiNGER.USE_OUTLIER": False}, {"SiNGER.USE_INFO": False},
                                  {"SiNGER.INIT": "random"}, {"SiNGER.INFO": "official", "SiNGER.BASIS": "threshold"}])
def test_singer_ablation_switches(make_cfg, opts):
    d = build_distiller(make_cfg("SiNGER", **opts))
    out = d(torch.rand(2, 3, 32, 32))
    assert ("loss_outlier" in out) == d.use_outlier
    assert ("loss_info" in out) == d.use_info
    out["loss"].backward()


def test_singer_detach_target_stops_kd_gradient_into_adapter(make_cfg):
    d = build_distiller(make_cfg("SiNGER", **{"SiNGER.DETACH_TARGET": True, "SiNGER.USE_OUTLIER": False,
                                              "SiNGER.USE_INFO": False}))
    d(torch.rand(2, 3, 32, 32))["loss"].backward()
    assert all(p.grad is None for p in d.adapters.parameters())


def test_grid_alignment_patch14_teacher_patch16_student(make_cfg):
    cfg = make_cfg("SiNGER", size=32, **{"DISTILLER.TEACHER": "dinov2_small"})
    d = build_distiller(cfg)
    x = torch.rand(2, 3, 32, 32)
    assert d.teacher.net.patch_size == 14 and d.student_grid(x) == (2, 2)
    out = d(x)  # teacher sees 28 px → 2×2 grid, matching the student's
    assert torch.isfinite(out["loss"])
    cfg.DISTILLER.GRID_ALIGN = "interpolate"
    cfg.DATASET.INPUT_SIZE = 64
    d2 = build_distiller(cfg)
    x = torch.rand(2, 3, 64, 64)
    feats, tgrid = d2.teacher(x, [1], student_grid=(4, 4))
    assert tgrid == (5, 5)  # 64 px → nearest multiple of 14 = 70 px → 5×5 tokens, resampled to 4×4
    targets = d2.distill_targets(x)
    assert all(v[0].shape[1] == 16 for v in targets.values())
    assert torch.isfinite(d2(x)["loss"])


def test_register_tokens_are_split_not_sliced(make_cfg):
    cfg = make_cfg("SiNGER", **{"DISTILLER.TEACHER": "dinov2_small_reg"})
    d = build_distiller(cfg)
    x = torch.rand(1, 3, 32, 32)
    feats, grid = d.teacher(x, [1], student_grid=(2, 2))
    split = d.teacher.net.split(feats[1], grid)
    assert split.registers.shape[1] == 4 and split.patches.shape[1] == 4 and split.cls is not None
    torch.testing.assert_close(split.patches, feats[1][:, 5:])


def test_agreement_and_export_roundtrip_in_timm(make_cfg, tmp_path):
    import timm

    cfg = make_cfg("FitNet")
    d = build_distiller(cfg)
    agr = d.agreement(torch.rand(2, 3, 32, 32))
    assert set(agr) >= {"cos_teacher/L1", "relerr_target/L3"}
    kwargs = dict(cfg.DISTILLER.STUDENT_KWARGS) | {"img_size": 32}
    path = d.export_student(tmp_path / "student.safetensors", cfg.DISTILLER.STUDENT, kwargs)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                          pretrained_cfg_overlay={"file": str(path)}, **kwargs).eval()
    x = torch.rand(2, 3, 32, 32)
    d.student.eval()
    with torch.no_grad():
        ref = d.student(x, [2])[2]
        got = m.forward_intermediates(d.student.normalize(x), indices=[2], output_fmt="NLC",
                                      intermediates_only=True, norm=False)[0]
    torch.testing.assert_close(got, ref[:, 1:])


def test_supervised_baseline_trains_student_on_labels_without_teacher(make_cfg):
    cfg = make_cfg("Supervised", **{"DATASET.TYPE": "toy_scenes"})
    d = build_distiller(cfg)
    assert d.teacher is None and d.classifier.out_features == 8  # toy scenes declare 8 classes
    targets = {"label": torch.tensor([0, 3])}
    out = d(torch.rand(2, 3, 32, 32), targets)
    out["loss"].backward()
    assert all(p.grad is not None for _, p in d.trainable_parameters())
    assert d.agreement(torch.rand(1, 3, 32, 32)) == {}
