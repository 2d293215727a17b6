"""The controls of SiNGER's ablation ladder: FitNet in scale-aware units, FitNet against a fixed norm clamp (or with
outliers masked out of L_KD), and scale-aware SiNGER with a random adapter basis or without one of its terms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdistiller.config import flatten, load_config
from mdistiller.distillers import build_distiller
from mdistiller.distillers.losses import feature_kd_loss, norm_clamp, token_mse
from mdistiller.singer import null_basis
from tests.conftest import TINY_STUDENT, TINY_TEACHER

ROOT = Path(__file__).resolve().parents[1]
#: emulated artifacts that suit the tiny 4-block teacher (implanted after block 1, kept in every later block)
ARTIFACTS = {"DISTILLER.ARTIFACTS.ENABLE": True, "DISTILLER.ARTIFACTS.LAYER": 1, "DISTILLER.ARTIFACTS.SHARE": 0.1,
             "DISTILLER.ARTIFACTS.SCALE": 10.0, "DISTILLER.ARTIFACTS.PERSIST": True}
CONTROLS = ("fitnet_scaled", "fitnet_clamp", "fitnet_mask", "singer_random_init", "singer_no_info",
            "singer_no_outlier")


def test_norm_clamp_scales_only_the_patches_above_the_quantile():
    torch.manual_seed(3)
    x = torch.randn(2, 20, 8)
    x[0, 4] *= 30
    y = norm_clamp(x, 0.9)
    norms = x.norm(dim=-1)
    q = torch.quantile(norms, 0.9, dim=1, keepdim=True)
    above = norms > q
    assert torch.equal(y[~above], x[~above])
    assert torch.allclose(y[above].norm(dim=-1), q.expand_as(norms)[above], rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(y[above], x[above], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


def test_clamp_target_leaves_inliers_bit_identical_and_brings_artifacts_to_the_quantile(make_cfg):
    cfg = make_cfg("FitNet", size=128, **(ARTIFACTS | {"DISTILLER.ARTIFACTS.SHARE": 0.03}),
                   **{"FITNET.TARGET": "clamp", "FITNET.SCALE": "median"})
    d = build_distiller(cfg)
    d.eval()
    images = torch.rand(3, 3, 128, 128)  # 64 patches, 2 artifacts: above the 0.95-quantile (as in the demo)
    targets = d.distill_targets(images)
    artifacts = d.teacher.implant.last_mask
    assert artifacts.any()
    for original, target in targets.values():
        norms = original.float().norm(dim=-1)
        inlier = norms <= torch.quantile(norms, d.q, dim=1, keepdim=True)
        assert torch.equal(target[inlier], original[inlier])  # bit for bit
        assert not torch.equal(target[artifacts], original[artifacts])
        cos = torch.nn.functional.cosine_similarity(target[artifacts].float(), original[artifacts].float(), dim=-1)
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    stats = d.refinement_stats(images, q=0.95)  # no training: the clamp alone
    for s in stats.values():
        assert s["ratio_before"] > 2.0 and s["ratio_after_max"] <= 1.5
    assert any(k.startswith("refine/L") for k in d.agreement(images))


def test_scaled_fitnet_loss_is_fitnet_loss_over_the_stored_scale_squared(make_cfg):
    overrides = {"FITNET.LAYERS": []}  # one distilled layer (the last block): one scale s
    torch.manual_seed(0)
    plain = build_distiller(make_cfg("FitNet", **overrides))
    torch.manual_seed(0)
    scaled = build_distiller(make_cfg("FitNet", **overrides, **{"FITNET.SCALE": "median"}))
    missing = scaled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["feature_scale"] and bool((scaled.feature_scale == 0).all())
    images = torch.rand(4, 3, 32, 32)
    lp, ls = plain(images)["loss"], scaled(images)["loss"]
    s = scaled.feature_scale[0, 0]
    feats, grid = plain.teacher(images, plain.plan.teacher)
    median = plain.teacher.net.split(feats[plain.plan.teacher[0]], grid).patches.norm(dim=-1).median()
    assert s.item() == pytest.approx(median.item(), rel=1e-6)
    assert ls.item() == pytest.approx((lp / s**2).item(), rel=1e-6)
    assert "feature_scale" in scaled.state_dict()  # stored: a resumed run keeps the units of its first batch


def test_masked_kd_loss_averages_over_the_kept_tokens_only():
    a, b = torch.zeros(1, 3, 2), torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    keep = torch.tensor([[True, False, True]])
    assert feature_kd_loss(a, b, mask=keep).item() == pytest.approx((25 + 4) / 2)
    assert feature_kd_loss(a, b, "element", mask=keep).item() == pytest.approx((25 + 4) / 4)
    assert torch.equal(feature_kd_loss(a, b, mask=torch.ones(1, 3, dtype=torch.bool)), token_mse(a, b))


def test_random_init_basis_is_not_the_nullspace_one(make_cfg):
    null = build_distiller(make_cfg("SiNGER"))
    rand = build_distiller(make_cfg("SiNGER", **{"SiNGER.INIT": "random"}))
    for t in null.plan.teacher:
        n = null_basis(null.init_weight(t), null.rank)
        torch.testing.assert_close(null.adapters[str(t)].down.data, n)
        r = rand.adapters[str(t)].down.data
        r = r / r.norm(dim=0, keepdim=True)
        in_null = (n.T @ r).pow(2).sum().item() / null.rank  # 1 = inside the nullspace span, ≈ r/d at random
        assert in_null < 0.5


def test_demo_controls_differ_from_their_base_config_in_their_own_keys_only():
    def flat(name: str) -> dict:
        return flatten(load_config([ROOT / f"configs/demo/{name}.yaml"], validate=False))

    expect = {"fitnet_scaled": ("fitnet", {"FITNET.SCALE": "median"}),
              "fitnet_clamp": ("fitnet", {"FITNET.SCALE": "median", "FITNET.TARGET": "clamp"}),
              "fitnet_mask": ("fitnet", {"FITNET.SCALE": "median", "FITNET.TARGET": "mask"}),
              "singer_random_init": ("singer", {"SiNGER.INIT": "random"}),
              "singer_no_info": ("singer", {"SiNGER.USE_INFO": False}),
              "singer_no_outlier": ("singer", {"SiNGER.USE_OUTLIER": False})}
    for name, (base, keys) in expect.items():
        a, b = flat(base), flat(name)
        diff = {k: b[k] for k in b if a[k] != b[k] and k != "EXPERIMENT.NAME"}
        assert diff == keys, name


@pytest.mark.parametrize("name", CONTROLS)
def test_control_config_trains_with_the_artifact_teacher(tmp_path, name):
    import mdistiller
    from mdistiller.engine.metrics_file import read_metrics

    tiny = {"DISTILLER.TEACHER": "vit_small", "DISTILLER.TEACHER_WEIGHTS": "random",
            **{f"DISTILLER.TEACHER_KWARGS.{k}": v for k, v in TINY_TEACHER.items()},
            **{f"DISTILLER.STUDENT_KWARGS.{k}": v for k, v in TINY_STUDENT.items()}, "SiNGER.M_LAYERS": [2],
            "FITNET.LAYERS": [2], "SiNGER.RANK": 8, "DISTILLER.ARTIFACTS.LAYER": 1, "DATASET.INPUT_SIZE": 32,
            "DATASET.NUM_WORKERS": 0,
            "DATASET.TRAIN_SIZE": 64, "DATASET.VAL_SIZE": 8, "SOLVER.BATCH_SIZE": 8, "SOLVER.MAX_STEPS": 2,
            "LOG.FREQ": 1, "LOG.PROGRESS": False, "LOG.CKPT_EVERY_STEPS": 0, "LOG.AGREEMENT_EVERY_STEPS": 2}
    cfg = load_config([ROOT / f"configs/demo/{name}.yaml", ROOT / "configs/demo/artifacts.yaml"], validate=False)
    result = mdistiller.train(cfg, tiny, run_dir=tmp_path / name, device="cpu")
    assert result["step"] == 2
    rows = read_metrics(tmp_path / name)
    losses = [r["loss_kd"] for r in rows if "loss_kd" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    agree = {k for r in rows for k in r if k.startswith("agree/")}
    assert any(k.startswith("agree/refine/") for k in agree) == (name != "fitnet_mask" and name != "fitnet_scaled")
