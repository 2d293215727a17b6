"""Tests for mdistiller.analysis (tiny random-init timm ViTs, CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from mdistiller.analysis import (
    NO_ARTIFACTS_MESSAGE,
    adapter_alignment,
    alignment,
    extract_patch_tokens,
    gram,
    gram_distance,
    instrument_block,
    layer_artifact_table,
    linear_cka,
    linear_cka_per_image,
    norm_energy_correlation,
    patch_cosine,
    patch_norm_stats,
    recommend_layers,
    sublayer_changes,
    sublayer_profile,
    subspace_energy,
    summary,
)
from mdistiller.models.emulated import artifact_direction, implant_artifacts, patch_pixel_std
from mdistiller.singer import (
    SiNGERAdapter,
    linearize_ffn,
    null_basis,
    principal_basis,
    random_basis,
    singular_spectrum,
)

IMG, PATCH = 64, 8  # 8 x 8 = 64 patches


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=PATCH, depth=5, embed_dim=48, num_heads=2
    ).eval()


@pytest.fixture(scope="module")
def vit_reg() -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(
        "vit_small_patch14_reg4_dinov2",
        pretrained=False,
        img_size=56,
        depth=3,
        embed_dim=48,
        num_heads=2,
        init_values=0.5,
    ).eval()


def _images(b: int, size: int = IMG, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------- similarity
def test_linear_cka_invariances_and_hand_value() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q).item() == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * x + 2.0).item() == pytest.approx(1.0, abs=1e-10)
    # 4 x 2 by hand: XᵀX = diag(2, 2), YᵀY = diag(2, 0), YᵀX = diag(2, 0) → 4 / (2√2 · 2) = 1/√2
    xh = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    yh = torch.tensor([[1.0, 5.0], [0.0, 5.0], [-1.0, 5.0], [0.0, 5.0]])  # column 2 constant → centred away
    assert linear_cka(xh, yh).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # batched = per-image loop; widths may differ
    xb, yb = torch.randn(3, 20, 6, generator=g), torch.randn(3, 20, 4, generator=g)
    per = linear_cka_per_image(xb, yb)
    assert per.shape == (3,)
    assert torch.allclose(per, torch.stack([linear_cka(xb[i], yb[i]) for i in range(3)]))
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 2), torch.randn(4, 2))


def test_gram_and_gram_distance() -> None:
    fa = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.equal(gram(fa), torch.eye(2))
    assert gram_distance(fa, fa).item() == 0.0
    assert gram_distance(fa, fb).item() == pytest.approx(3.0)  # diag(1,1) vs diag(1,4)
    assert gram_distance(fa, fb, per_entry=True).item() == pytest.approx(1.5)
    assert gram_distance(fa, fb, normalize=True).item() == pytest.approx(0.0, abs=1e-12)  # cosine Grams equal
    g = torch.Generator().manual_seed(0)
    ta, sb = torch.randn(4, 10, 16, generator=g), torch.randn(4, 10, 8, generator=g)  # teacher vs student widths
    d = gram_distance(ta, sb)
    assert d.shape == (4,)
    assert d[2].item() == pytest.approx(gram_distance(ta[2], sb[2]).item())
    cos_gram = gram(ta, normalize=True)
    assert torch.allclose(torch.diagonal(cos_gram, dim1=-2, dim2=-1), torch.ones(4, 10))
    with pytest.raises(ValueError, match="share batch and token"):
        gram_distance(ta, sb[:, :5])


def test_patch_cosine_and_summary() -> None:
    f = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(patch_cosine(f, f), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(patch_cosine(f, -2 * f), -torch.ones(3, dtype=torch.float64))
    s = summary([1.0, 2.0, 3.0, 10.0])
    assert s["mean"] == pytest.approx(4.0)
    assert s["median"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt((9 + 4 + 1 + 36) / 3))
    assert summary(torch.tensor([0.5]))["std"] == 0.0


# --------------------------------------------------------------------------------------------------- subspace
def test_subspace_energy_and_correlation() -> None:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    basis, rest = u[:, :2].float(), u[:, 2:].float()
    inside = torch.randn(5, 2, generator=g) @ basis.T
    outside = torch.randn(5, 4, generator=g) @ rest.T
    assert torch.allclose(subspace_energy(inside, basis), torch.ones(5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(subspace_energy(outside, basis), torch.zeros(5, dtype=torch.float64), atol=1e-6)
    assert subspace_energy(torch.zeros(6), basis).item() == 0.0  # eps guards 0/0
    # high-norm patches live in span(basis) → positive correlation; negative against the complement
    norms = torch.linspace(1, 10, 20)
    mix = torch.linspace(0, 1, 20)[:, None]
    tokens = norms[:, None] * (mix * basis[:, 0] + (1 - mix) * rest[:, 0]) / (mix**2 + (1 - mix) ** 2).sqrt()
    assert norm_energy_correlation(tokens, basis) > 0.9
    assert norm_energy_correlation(tokens, rest) < -0.9
    with pytest.raises(ValueError, match="width"):
        subspace_energy(torch.randn(3, 5), basis)


def test_alignment_of_null_basis_and_adapter(vit: torch.nn.Module) -> None:
    w = linearize_ffn(vit.blocks[1])
    d, r = w.shape[0], 8
    assert 2 * r <= d
    n, p = null_basis(w, r), principal_basis(w, r)
    assert alignment(n.T, n) == pytest.approx(1.0, abs=1e-6)  # E_safe(Nᵀ) = 1
    assert alignment(n.T, p) == pytest.approx(0.0, abs=1e-6)  # E_prob(Nᵀ) = 0
    assert alignment(n, n) == pytest.approx(1.0, abs=1e-6)  # [d, r] is transposed automatically
    res = adapter_alignment(SiNGERAdapter(n), w)
    assert res["rank"] == r
    for key in ("up", "down_T"):
        assert res[key]["E_safe"] == pytest.approx(1.0, abs=1e-6)
        assert res[key]["E_prob"] == pytest.approx(0.0, abs=1e-6)
    res_p = adapter_alignment(SiNGERAdapter(p), w)
    assert res_p["up"]["E_prob"] == pytest.approx(1.0, abs=1e-6)
    rand = adapter_alignment(SiNGERAdapter(random_basis(d, r, generator=torch.Generator().manual_seed(0))), w)
    assert 0.0 < rand["up"]["E_safe"] < 0.9
    with pytest.raises(ValueError, match="no dimension of size"):
        alignment(torch.randn(3, 5), n)


# --------------------------------------------------------------------------------------------------- artifacts
def test_patch_norm_stats_hand_values() -> None:
    norms = torch.tensor([[1.0, 2.0, 3.0, 10.0], [2.0, 2.0, 2.0, 2.0]])
    tokens = torch.stack([norms, torch.zeros_like(norms)], dim=-1)  # [2, 4, 2] with those norms
    s = patch_norm_stats(tokens, k=(2, 4))
    assert (s["num_images"], s["num_patches"]) == (2, 4)
    assert s["median"] == pytest.approx((2.5 + 2.0) / 2)
    assert s["mean"] == pytest.approx((4.0 + 2.0) / 2)
    assert s["max"] == pytest.approx((10.0 + 2.0) / 2)
    assert s["max_median_ratio"] == pytest.approx((4.0 + 1.0) / 2)
    assert s["pooled_median"] == pytest.approx(2.0)
    assert s["pooled_mean"] == pytest.approx(3.0)
    assert s["pooled_max"] == pytest.approx(10.0)
    assert s["pooled_max_median_ratio"] == pytest.approx(5.0)
    assert s["share_above_2x"] == pytest.approx(1 / 8)  # only the 10 (> 2 × 2.5)
    assert s["share_above_4x"] == pytest.approx(0.0)  # 10 is not > 4 × 2.5
    with pytest.raises(ValueError, match=r"\[B, P, d\]"):
        patch_norm_stats(tokens[0])


def _row(layer: int, ratio: float, share: float = 0.0) -> dict:
    return {"layer": layer, "max_median_ratio": ratio, "share_above_4x": share}


def test_recommend_layers_rule() -> None:
    vit_l = [_row(i, 1.5 if i <= 11 else 8.0) for i in range(24)]  # artifacts after 11
    rec = recommend_layers(vit_l)
    assert (rec["onset"], rec["layers"], rec["artifacts_found"]) == (12, [17, 23], True)
    clean = recommend_layers([_row(i, 1.3) for i in range(24)])
    assert clean["artifacts_found"] is False and clean["onset"] is None
    assert clean["layers"] == [17, 23]
    assert NO_ARTIFACTS_MESSAGE in clean["reason"]
    by_share = recommend_layers([_row(i, 2.0, 0.05 if i >= 6 else 0.0) for i in range(12)])
    assert by_share["onset"] == 6 and by_share["layers"] == [8, 11]
    late = recommend_layers([_row(i, 9.0 if i == 11 else 1.0) for i in range(12)])
    assert late["layers"] == [11] and late["intermediate"] is None
    with pytest.raises(KeyError, match="share_above_4x"):
        recommend_layers([{"layer": 0, "max_median_ratio": 1.0}])


def test_extract_patch_tokens_splits_registers(vit_reg: torch.nn.Module) -> None:
    x = _images(2, 56)
    patches, prefix = extract_patch_tokens(vit_reg, x, layers=[0, -1], return_prefix=True)
    assert sorted(patches) == [0, 2]
    assert vit_reg.num_prefix_tokens == 5  # CLS + 4 registers
    assert patches[2].shape == (2, 16, 48) and prefix[2].shape == (2, 5, 48)
    captured = {}
    h = vit_reg.blocks[2].register_forward_hook(lambda m, a, o: captured.setdefault("out", o))
    vit_reg.forward_features(x)
    h.remove()
    assert torch.allclose(captured["out"][:, 5:], patches[2]) and torch.allclose(captured["out"][:, :5], prefix[2])
    with pytest.raises(ValueError, match="out of range"):
        extract_patch_tokens(vit_reg, x, layers=[3])


# --------------------------------------------------------------------------------------------------- emulated
def test_patch_pixel_std_order() -> None:
    img = torch.zeros(1, 3, 16, 16)
    img[:, :, :8, 8:] = torch.arange(64.0).reshape(8, 8)  # patch 1 (top-right) varies
    std = patch_pixel_std(img, 8)
    assert std.shape == (1, 4)
    assert std[0, 1] > 0 and torch.all(std[0, [0, 2, 3]] == 0)


def test_emulated_artifacts_scale_mask_and_onset(vit: torch.nn.Module) -> None:
    layer, scale = 2, 10.0
    x = _images(3)
    flat = [[3, 20, 47], [0, 9, 63], [5, 6, 7]]  # per-image flat patches (row-major on the 8 x 8 grid)
    for b, idxs in enumerate(flat):
        for i in idxs:
            r, c = divmod(i, IMG // PATCH)
            x[b, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 0.3
    clean = extract_patch_tokens(vit, x)
    imp = implant_artifacts(vit, layer, share=3 / 64, scale=scale, direction="principal")
    try:
        dirty = extract_patch_tokens(vit, x)
        mask = imp.last_mask
    finally:
        imp.remove()
    assert imp.label == "emulated artifacts" and imp.config["layer"] == layer
    expected = torch.zeros(3, 64, dtype=torch.bool)
    for b, idxs in enumerate(flat):
        expected[b, idxs] = True
    assert torch.equal(mask, expected)
    for lay in range(layer):  # blocks before the implant are untouched
        assert torch.equal(clean[lay], dirty[lay])
    # implanted tokens get exactly scale × the clean median norm; others unchanged at that layer
    med = torch.quantile(clean[layer].double().norm(dim=-1), 0.5, dim=1)
    got = dirty[layer].double().norm(dim=-1)
    assert torch.allclose(got[mask].reshape(3, 3), scale * med[:, None].expand(3, 3), rtol=1e-4)
    assert torch.equal(dirty[layer][~mask], clean[layer][~mask])
    stats = patch_norm_stats(dirty[layer])
    assert stats["max_median_ratio"] == pytest.approx(scale, rel=0.1)
    assert patch_norm_stats(clean[layer])["max_median_ratio"] < 3
    rec = recommend_layers(layer_artifact_table(dirty))
    assert rec["onset"] == layer and rec["layers"] == [3, 4]
    assert torch.equal(extract_patch_tokens(vit, x)[4], clean[4])  # removed → model restored


def test_emulated_artifacts_spare_prefix_tokens_and_directions(vit_reg: torch.nn.Module) -> None:
    x = _images(2, 56, seed=3)
    clean_p, clean_pre = extract_patch_tokens(vit_reg, x, return_prefix=True)
    with implant_artifacts(vit_reg, 1, share=0.2, scale=8.0, direction="null") as imp:
        dirty_p, dirty_pre = extract_patch_tokens(vit_reg, x, return_prefix=True)
        assert imp.last_mask.shape == (2, 16) and int(imp.last_mask[0].sum()) == 4  # ceil(0.2 · 16)
    assert torch.equal(clean_pre[1], dirty_pre[1])  # CLS + registers untouched at the implanted layer
    assert not torch.equal(clean_p[1], dirty_p[1])
    u_null, _ = singular_spectrum(linearize_ffn(vit_reg.blocks[2]))
    assert abs(float(imp.direction @ u_null[:, -1])) == pytest.approx(1.0, abs=1e-5)
    last = artifact_direction(vit_reg, 2, "principal")  # last block: its own W̃
    u_last, _ = singular_spectrum(linearize_ffn(vit_reg.blocks[2]))
    assert abs(float(last @ u_last[:, 0])) == pytest.approx(1.0, abs=1e-5)
    r1, r2 = artifact_direction(vit_reg, 0, "random", 7), artifact_direction(vit_reg, 0, "random", 7)
    assert torch.equal(r1, r2) and float(r1.norm()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="direction"):
        implant_artifacts(vit_reg, 0, direction="sideways")
    with pytest.raises(ValueError, match="out of range"):
        implant_artifacts(vit_reg, 3)


def test_emulated_artifacts_grad_and_batch_sizes(vit: torch.nn.Module) -> None:
    with implant_artifacts(vit, 0, share=0.02, scale=5.0, direction="random", seed=1) as imp:
        for b in (1, 4):
            x = _images(b, seed=b).requires_grad_(True)
            vit.forward_features(x).pow(2).mean().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()
            assert imp.last_mask.shape == (b, 64) and torch.all(imp.last_mask.sum(1) == 2)  # ceil(0.02 · 64)


# --------------------------------------------------------------------------------------------------- sublayer
@pytest.mark.parametrize("which", ["vit", "vit_reg"])
def test_sublayer_decomposition_reproduces_block(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    npt = model.num_prefix_tokens
    x_in = torch.randn(2, npt + 16, model.embed_dim, generator=torch.Generator().manual_seed(0))
    block = model.blocks[1]
    t = instrument_block(block, x_in)
    with torch.no_grad():
        assert torch.allclose(t["x_out"], block(x_in), atol=1e-5)
    ch = sublayer_changes(block, x_in, npt)
    assert set(ch) == {"delta_sa", "delta_ffn", "g_ffn1", "g_ffn2"} and all(v.shape == (2,) for v in ch.values())
    p = {k: v[:, npt:].double() for k, v in t.items()}
    manual = ((p["x_sa"] - p["x_in"]).norm(dim=-1) / p["x_in"].norm(dim=-1)).mean(-1)
    assert torch.allclose(ch["delta_sa"], manual)
    assert torch.allclose(ch["g_ffn2"], (p["z2"].norm(dim=-1) / p["a1"].norm(dim=-1)).mean(-1))


def test_sublayer_profile(vit_reg: torch.nn.Module) -> None:
    prof = sublayer_profile(vit_reg, _images(2, 56), layers=[0, 2])
    assert sorted(prof) == [0, 2]
    assert all(torch.isfinite(v).all() and v.shape == (2,) for v in prof[2].values())


def test_persistent_artifacts_reach_every_later_layer():
    import timm

    from mdistiller.analysis.artifacts import extract_patch_tokens, layer_artifact_table
    from mdistiller.models.emulated import implant_artifacts

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4).eval()
    x = torch.rand(2, 3, 32, 32)
    x[:, :, :16, :16] = 0.5  # a flat patch: the lowest pixel std
    with implant_artifacts(model, 1, share=0.25, scale=8.0, persist=True):
        table = layer_artifact_table(extract_patch_tokens(model, x, [0, 1, 2, 3]))
    ratios = [row["max_median_ratio"] for row in table]
    assert ratios[0] < 3 and all(r > 6 for r in ratios[1:]), ratios
