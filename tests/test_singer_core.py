"""Nullspace, adapter and loss properties (paper eq. 6-10, 14-19)."""

from __future__ import annotations

import pytest
import timm
import torch

from mdistiller.distillers.losses import feature_kd_loss, gram, gram_mse, outlier_loss
from mdistiller.singer import (
    SiNGERAdapter,
    k_energy,
    k_eps,
    linearize_ffn,
    null_basis,
    principal_basis,
    random_basis,
    singular_spectrum,
    threshold_basis,
)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=64, num_heads=2)
    return m.blocks[1]


def test_linearize_ffn_matches_composed_fc_weights(block):
    w = linearize_ffn(block)
    x = torch.randn(5, 64)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    ref = (x @ fc1.weight.T) @ fc2.weight.T  # fc2(fc1(x)) without biases and activation
    assert w.shape == (64, 64)
    torch.testing.assert_close(x @ w, ref, rtol=1e-4, atol=1e-5)
    # the layer-scale / norm options fold diagonals in exactly
    gamma = torch.rand(64) + 0.5
    block.norm2.weight.data.copy_(gamma)
    torch.testing.assert_close(linearize_ffn(block, include_norm=True), gamma[:, None] * w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_null_basis_is_orthonormal_and_annihilates_to_the_rth_smallest_sigma(block, rank):
    w = linearize_ffn(block)
    n = null_basis(w, rank)
    _, s = singular_spectrum(w)
    assert n.shape == (64, rank)
    torch.testing.assert_close(n.T @ n, torch.eye(rank), atol=1e-5, rtol=0)
    spectral = torch.linalg.matrix_norm(n.T.double() @ w.double(), ord=2)
    assert spectral.item() == pytest.approx(s[-rank].item(), rel=1e-4)  # ‖Ñᵀ W̃‖₂ = σ_{d−r+1}
    # and it is the least-responsive subspace: a random orthonormal basis responds more
    rnd = random_basis(64, rank, generator=torch.Generator().manual_seed(1))
    assert torch.linalg.matrix_norm(rnd.T @ w, ord=2) > spectral


def test_principal_and_null_bases_are_orthogonal(block):
    w = linearize_ffn(block)
    p, n = principal_basis(w, 16), null_basis(w, 16)
    assert torch.abs(p.T @ n).max() < 1e-5


def test_threshold_basis_reproduces_released_rule():
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.04, 0.02, 0.01], dtype=torch.float64)
    w = (u @ torch.diag(s) @ v.T).float()
    basis, k = threshold_basis(w, 2, eps=0.05)
    assert k == 2
    # the first two below ε in SVD order: σ = 0.04 and 0.02 (not the two smallest, 0.02 and 0.01)
    assert torch.abs(torch.abs(basis[:, 0].double() @ u[:, 3]) - 1) < 1e-4
    assert torch.abs(torch.abs(basis[:, 1].double() @ u[:, 4]) - 1) < 1e-4
    padded, k = threshold_basis(w, 5, eps=0.05, generator=torch.Generator().manual_seed(0))
    assert k == 3 and padded.shape == (6, 5)
    torch.testing.assert_close(padded.norm(dim=0), torch.ones(5), atol=1e-5, rtol=0)


def test_spectrum_diagnostics_eq18_eq19():
    s = torch.tensor([3.0, 2.0, 1.0, 0.04, 0.01])
    # cumulative energy: 9, 13, 14, 14.0016, 14.0017 of 14.0017
    assert k_energy(s, 0.9) == 2  # 13 / 14.0017 = 0.928
    assert k_energy(s, 0.95) == 3  # 14 / 14.0017
    assert k_energy(s, 0.9999) == 4
    assert k_energy(s, 0.5) == 1
    assert k_eps(s, 0.05) == (4, 2)
    assert k_eps(s, 0.001) == (None, 0)


def test_adapter_at_init_returns_f_plus_f_n_nt(block):
    n = null_basis(linearize_ffn(block), 8)
    adapter = SiNGERAdapter(n)
    f = torch.randn(2, 10, 64)
    torch.testing.assert_close(adapter(f), f + f @ n @ n.T, rtol=1e-5, atol=1e-5)
    assert adapter.down.shape == (64, 8) and adapter.up.shape == (8, 64)
    torch.testing.assert_close(adapter.up, adapter.down.T)
    # the perturbation lies in span(N): N Nᵀ ΔF = ΔF
    delta = adapter.delta(f)
    torch.testing.assert_close(delta @ n @ n.T, delta, rtol=1e-4, atol=1e-5)


def test_random_adapter_variant_and_rank_errors(make_cfg):
    """The Table-4 random init is ``SiNGER.INIT random``: unit-norm Gaussian columns, not the nullspace basis."""
    from mdistiller.distillers import build_distiller

    d = build_distiller(make_cfg("SiNGER", **{"SiNGER.INIT": "random"}))
    a = d.adapters["1"]
    assert a.rank == 8 and a.dim == 96
    torch.testing.assert_close(a.down.norm(dim=0), torch.ones(8))
    assert not torch.allclose(a.down, null_basis(d.init_weight(1), 8))
    with pytest.raises(ValueError, match="rank"):
        null_basis(torch.randn(8, 8), 9)


def test_outlier_loss_hand_computation():
    # one image, 5 patches with norms 1, 2, 3, 4, 10 (vectors along one axis)
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    x = torch.zeros(1, 5, 3)
    x[0, :, 0] = norms
    q = 0.75  # linear interpolation: position 0.75*4 = 3 → threshold 4.0; outlier: 10 only
    assert outlier_loss(x, q).item() == pytest.approx((10 - 4) ** 2)
    q = 0.5  # threshold 3.0; outliers 4 and 10 → mean of 1² and 7²
    assert outlier_loss(x, q).item() == pytest.approx((1 + 49) / 2)
    # per-image thresholds, pooled mean over all outliers of the batch (1/|O|)
    y = torch.cat([x, 2 * x])  # second image: norms doubled, threshold 6 at q=0.5; outliers 8, 20
    expected = (1 + 49 + 4 + 196) / 4
    assert outlier_loss(y, 0.5).item() == pytest.approx(expected)


def test_outlier_loss_is_zero_without_outliers_and_threshold_is_detached():
    x = torch.ones(2, 6, 4, requires_grad=True)  # all norms equal → nothing strictly above the quantile
    loss = outlier_loss(x, 0.9)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    z = torch.zeros(1, 4, 2)
    z[0, :, 0] = torch.tensor([1.0, 1.0, 1.0, 5.0])
    z.requires_grad_(True)
    outlier_loss(z, 0.5).backward()  # threshold 1.0 detached: gradient only on the outlier patch
    assert torch.count_nonzero(z.grad[0, :3]) == 0 and z.grad[0, 3, 0].item() == pytest.approx(2 * 4.0)


def test_feature_kd_loss_reductions():
    s, t = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert feature_kd_loss(s, t, "token").item() == pytest.approx(4.0)  # eq. 1: Σ over channels
    assert feature_kd_loss(s, t, "element").item() == pytest.approx(1.0)


def test_gram_cosine_and_raw():
    f = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]])
    torch.testing.assert_close(gram(f, normalize=False), torch.tensor([[[9.0, 0.0], [0.0, 4.0]]]))
    torch.testing.assert_close(gram(f, normalize=True), torch.eye(2)[None])
    assert gram_mse(f, 2 * f, normalize=True).item() == 0.0
    assert gram_mse(f, 2 * f, normalize=False).item() == pytest.approx(((36 - 9) ** 2 + (16 - 4) ** 2) / 4)
