"""Scale-aware SiNGER (SiNGER.SCALE median): unit invariance, inlier Gram, adapter rate, logged term gradients."""

from __future__ import annotations

import pytest
import torch

from mdistiller.analysis.refinement import format_refinement, refinement_passes
from mdistiller.distillers import build_distiller
from mdistiller.distillers.losses import gram_mse, inlier_mask, masked_gram_mse, token_mse

SCALED = {"SiNGER.SCALE": "median", "SiNGER.GRAM": "none", "SiNGER.INFO_PATCHES": "inliers"}


@torch.no_grad()
def scale_teacher_features(model: torch.nn.Module, c: float) -> None:
    """Make every block output of a pre-norm timm ViT exactly ``c`` times larger: the stem and each residual branch's
    output layer are scaled by ``c``, and the LayerNorms in front of the branches cancel ``c`` on their inputs."""
    model.patch_embed.proj.weight.mul_(c)
    model.patch_embed.proj.bias.mul_(c)
    model.pos_embed.mul_(c)
    model.cls_token.mul_(c)
    for blk in model.blocks:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            lin.weight.mul_(c)
            lin.bias.mul_(c)


def twin_distillers(make_cfg, c: float, **overrides):
    """A SiNGER distiller and its twin whose teacher features are ``c ×`` larger (same student, adapters, and a
    projection scaled by ``c`` so the student side follows)."""
    torch.manual_seed(0)
    a = build_distiller(make_cfg("SiNGER", **overrides))
    torch.manual_seed(0)
    b = build_distiller(make_cfg("SiNGER", **overrides))
    scale_teacher_features(b.teacher.net.model, c)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in b.proj.parameters():
            p.mul_(c)
    return a, b


def losses_and_adapter_grads(d, images):
    d.train()
    out = d(images)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in d.adapters.parameters()])
    return {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}, grads


@pytest.mark.parametrize("gram", ["none", "raw", "cosine"])
def test_scaled_mode_is_invariant_to_the_teacher_feature_scale(make_cfg, gram):
    images = torch.rand(4, 3, 32, 32)
    a, b = twin_distillers(make_cfg, 4.0, **(SCALED | {"SiNGER.GRAM": gram}))
    la, ga = losses_and_adapter_grads(a, images)
    lb, gb = losses_and_adapter_grads(b, images)
    assert set(la) == {"loss", "loss_kd", "loss_outlier", "loss_info"}
    for k in la:
        assert lb[k] == pytest.approx(la[k], rel=1e-3), k
    torch.testing.assert_close(b.feature_scale, 4.0 * a.feature_scale, rtol=1e-4, atol=0)
    cos = torch.nn.functional.cosine_similarity(ga, gb, dim=0)
    assert cos > 0.9999 and gb.norm() == pytest.approx(ga.norm().item(), rel=1e-3)


def test_paper_mode_is_not_scale_invariant(make_cfg):
    """The same construction on the paper reading: L_outlier and L_KD grow with c² (what the scaled mode fixes)."""
    images = torch.rand(4, 3, 32, 32)
    a, b = twin_distillers(make_cfg, 4.0)
    la, _ = losses_and_adapter_grads(a, images)
    lb, _ = losses_and_adapter_grads(b, images)
    assert lb["loss_outlier"] == pytest.approx(16 * la["loss_outlier"], rel=1e-3)
    assert lb["loss_kd"] == pytest.approx(16 * la["loss_kd"], rel=1e-3)


def test_feature_scale_is_measured_once_and_resumes_from_the_state_dict(make_cfg):
    cfg = make_cfg("SiNGER", **SCALED)
    d = build_distiller(cfg)
    assert bool((d.feature_scale == 0).all())
    images = torch.rand(4, 3, 32, 32)
    d(images)
    first = d.feature_scale.clone()
    feats, grid = d.teacher(images, [1, 2, 3])
    expect = d.teacher.net.split(feats[1], grid).patches.norm(dim=-1).median()
    assert first[0, 0].item() == pytest.approx(expect.item(), rel=1e-6)
    d(torch.rand(4, 3, 32, 32) * 0.5)  # a later batch does not move it
    torch.testing.assert_close(d.feature_scale, first)
    fresh = build_distiller(cfg)
    fresh.load_state_dict(d.state_dict())  # a resumed run uses the stored scale, not its own first batch
    fresh(torch.rand(4, 3, 32, 32) * 0.5)
    torch.testing.assert_close(fresh.feature_scale, first)


def test_masked_gram_equals_the_gram_of_the_inlier_patches():
    torch.manual_seed(1)
    a, b = torch.randn(2, 10, 6), torch.randn(2, 10, 6)
    b[0, 3] *= 20  # an outlier in image 0
    mask = inlier_mask(b, 0.9)
    assert not mask[0, 3] and mask.sum() == 18  # 9 of 10 patches per image at or below the 0.9 quantile
    per_image = [gram_mse(a[i : i + 1, mask[i]], b[i : i + 1, mask[i]], normalize=False) for i in range(2)]
    assert masked_gram_mse(a, b, mask).item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_token_mse_is_the_mean_squared_distance_over_masked_patches():
    a, b = torch.zeros(1, 3, 2), torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    mask = torch.tensor([[True, False, True]])
    assert token_mse(a, b, mask).item() == pytest.approx((25 + 4) / 2)
    assert token_mse(a, b).item() == pytest.approx((25 + 1 + 4) / 3)


def test_adapter_lr_scale_makes_its_own_optimizer_group(make_cfg):
    from mdistiller.engine.optim import build_optimizer

    d = build_distiller(make_cfg("SiNGER", **{"SiNGER.ADAPTER_LR_SCALE": 10.0}))
    opt = build_optimizer(d.optimizer_groups(), lr=1e-3)
    adapter_ids = {id(p) for p in d.adapters.parameters()}
    for g in opt.param_groups:
        in_adapter = {id(p) in adapter_ids for p in g["params"]}
        assert len(in_adapter) == 1
        assert g["lr"] == pytest.approx(1e-2 if in_adapter.pop() else 1e-3)
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(d.trainable_parameters())


def test_refinement_stats_and_acceptance_table(make_cfg):
    d = build_distiller(make_cfg("SiNGER"))
    stats = d.refinement_stats(torch.rand(3, 3, 32, 32))
    assert set(stats) == {1, 3}
    inter, final = stats[1], stats[3]
    assert {"cos_inlier", "cos_next", "cos_final", "ratio_before", "ratio_after", "ratio_after_max"} <= set(inter)
    assert "cos_next" not in final and -1 <= final["cos_inlier"] <= 1
    assert inter["ratio_before"] > 1.0  # outliers are, by definition here, above the quantile of F
    # with the adapter switched off F̂ = F: perfect inlier cosines everywhere, ratios unchanged
    with torch.no_grad():
        for a in d.adapters.values():
            a.up.zero_()
    ident = d.refinement_stats(torch.rand(3, 3, 32, 32))
    for s in ident.values():
        assert s["cos_inlier"] == pytest.approx(1.0, abs=1e-5)
        assert s.get("cos_next", 1.0) == pytest.approx(1.0, abs=1e-5)
        assert s["ratio_after"] == pytest.approx(s["ratio_before"], rel=1e-5)
    passed = {t: dict(s, ratio_after_max=1.2) for t, s in ident.items()}
    assert refinement_passes(passed) and not refinement_passes(ident | {3: dict(ident[3], ratio_after_max=1.6)})
    table = format_refinement(passed, title="t")
    assert table.count("✓") == 2 and table.splitlines()[4].startswith("| 1 | ")
    # several runs in one table: a leading run column, one row per (run, layer), a missing number as "–"
    both = format_refinement({"a": passed, "b": {3: {k: v for k, v in ident[3].items() if k != "cos_final"}}})
    lines = both.splitlines()
    assert lines[0].startswith("| run | layer |") and len(lines) == 2 + 3
    assert lines[2].startswith("| a | 1 | ") and lines[4].startswith("| b | 3 | ") and "| – |" in lines[4]


def test_logged_term_gradient_norms_equal_direct_autograd(tmp_path):
    import copy

    from mdistiller.config import load_config
    from mdistiller.engine.trainer import Trainer
    from tests.test_train import cpu_env, records, tiny_yaml

    opts = ["SOLVER.MAX_STEPS", "2", "LOG.GRAD_TERMS_EVERY_STEPS", "1"]
    for k, v in SCALED.items():
        opts += [k, v]
    trainer = Trainer(load_config([tiny_yaml(tmp_path)], opts), cpu_env(), tmp_path / "run")
    d = trainer.distiller
    images = torch.rand(4, 3, 32, 32)
    d(images)  # fixes the feature scale, so the replay below sees the same units
    state = copy.deepcopy(d.state_dict())
    trainer.train_step(images)
    logged = trainer.grad_terms
    assert set(logged) == {f"grad/{t}/{g}" for t in ("kd", "outlier", "info") for g in ("student", "adapter")}
    d.load_state_dict(state)
    d.train()
    d.keep_terms = True
    d(images)
    groups = d.gradient_groups()
    for term, value in d.last_terms.items():
        for group, params in groups.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            direct = torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None) + torch.zeros(()))
            assert logged[f"grad/{term}/{group}"] == pytest.approx(direct.item(), rel=1e-4, abs=1e-12), (term, group)
    assert logged["grad/info/student"] == 0.0 and logged["grad/info/adapter"] > 0  # L_info reaches the adapter only
    assert all(p.grad is None for p in d.parameters())  # measuring accumulates nothing
    trainer.fit()  # continues at step 1 → 2; the measured step lands in metrics.jsonl as its own record
    logged_steps = [r for r in records(tmp_path / "run") if "grad/kd/student" in r]
    assert [r["step"] for r in logged_steps] == [2]


@pytest.mark.parametrize("kind,terms", [("FitNet", {"kd"}), ("ViTKD", {"mimic", "gen"})])
def test_every_method_keeps_its_terms_and_the_norms_add_up(make_cfg, kind, terms):
    d = build_distiller(make_cfg(kind))
    d.train()
    d.keep_terms = True
    torch.manual_seed(3)
    out = d(torch.rand(2, 3, 32, 32))
    norms = d.term_grad_norms()
    assert {k.split("/")[1] for k in norms} == terms and not d.keep_terms and not d.last_terms
    out["loss"].backward()
    total = torch.sqrt(sum(p.grad.pow(2).sum() for _, p in d.trainable_parameters() if p.grad is not None))
    if len(terms) == 1:  # one term: its gradient is the whole gradient
        assert norms["grad/kd/student"] == pytest.approx(total.item(), rel=1e-4)
    else:  # the triangle inequality bounds the whole by the parts
        assert total.item() <= sum(norms.values()) * (1 + 1e-5)
