"""The losses of every method preset, pinned to the bit on tiny random-init ViTs.

A guard for refactors of how distillers are built (config → constructor arguments, teacher truncation, emulated
artifacts): the same config, seed and batch must give exactly the same loss terms and the same gradient. The
expected values were computed once on CPU in float32 with one thread; ``float.hex`` keeps every bit.
If a deliberate numerical change moves them, recompute with ``python -m tests.test_preset_losses`` (prints the
table) and say why in the commit.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config

#: preset name → (DISTILLER.TYPE, config overrides); the released-code options mirror singer_official.yaml
PRESETS: dict[str, tuple[str, dict]] = {
    "fitnet": ("FitNet", {}),
    "vitkd": ("ViTKD", {}),
    "singer_paper": ("SiNGER", {}),
    "singer_official": ("SiNGER", {
        "DISTILLER.KD_REDUCTION": "element", "DISTILLER.KD_CLS": True, "DISTILLER.LAYER_REDUCTION": "mean",
        "SiNGER.RANK": 64, "SiNGER.OUTLIER_Q": 0.97, "SiNGER.BASIS": "threshold", "SiNGER.NULL_THRES": 0.05,
        "SiNGER.INFO": "official", "SiNGER.LOSS.OUTLIER_WEIGHT": 0.01,
    }),
    "singer_random_raw_gram": ("SiNGER", {"SiNGER.INIT": "random", "SiNGER.GRAM": "raw",
                                          "SiNGER.LINEARIZE_NORM": True, "SiNGER.INFO_FRACTION": 0.5}),
    "singer_artifacts": ("SiNGER", {"DISTILLER.ARTIFACTS.ENABLE": True, "DISTILLER.ARTIFACTS.LAYER": 0,
                                    "DISTILLER.ARTIFACTS.SHARE": 0.25, "DISTILLER.ARTIFACTS.PERSIST": True}),
    "fitnet_three_layers": ("FitNet", {"DISTILLER.TEACHER_LAYERS": [0, 2], "FITNET.LOSS.FEAT_WEIGHT": 2.0}),
    "supervised": ("Supervised", {"DATASET.TYPE": "toy_scenes"}),
}

#: preset → {loss key: float.hex}, plus "grad_sq": Σ‖∇θ‖² over the trainable parameters after ``loss.backward()``
EXPECTED: dict[str, dict[str, str]] = {
    'fitnet': {
        'loss': '0x1.f10cb80000000p+4',
        'loss_kd': '0x1.f10cb80000000p+4',
        'grad_sq': '0x1.d2b0481dea288p+10',
    },
    'vitkd': {
        'loss': '0x1.3b9c220000000p-8',
        'loss_gen': '0x1.2dff3e0000000p-10',
        'loss_mimic': '0x1.e038a60000000p-9',
        'grad_sq': '0x1.b4707b8c81e5bp-16',
    },
    'singer_paper': {
        'loss': '0x1.2729e00000000p+5',
        'loss_info': '0x1.8dff8a0000000p-8',
        'loss_kd': '0x1.271bd80000000p+5',
        'loss_outlier': '0x1.9780780000000p-11',
        'grad_sq': '0x1.071d2526f3ae6p+11',
    },
    'singer_official': {
        'loss': '0x1.9ed9960000000p-2',
        'loss_info': '0x1.9df31c0000000p-5',
        'loss_kd': '0x1.6b170c0000000p-2',
        'loss_outlier': '0x1.9e8db80000000p-10',
        'grad_sq': '0x1.5b70bf3d9d653p-4',
    },
    'singer_random_raw_gram': {
        'loss': '0x1.666ddc0000000p+5',
        'loss_info': '0x1.e72d580000000p+2',
        'loss_kd': '0x1.29805a0000000p+5',
        'loss_outlier': '0x1.f631240000000p-9',
        'grad_sq': '0x1.7575dc3085a7bp+11',
    },
    'singer_artifacts': {
        'loss': '0x1.a008aa0000000p+9',
        'loss_info': '0x1.3b4d020000000p-8',
        'loss_kd': '0x1.8551580000000p+9',
        'loss_outlier': '0x1.ab6b360000000p+5',
        'grad_sq': '0x1.0ed606c913366p+19',
    },
    'fitnet_three_layers': {
        'loss': '0x1.7159620000000p+6',
        'loss_kd': '0x1.7159620000000p+6',
        'grad_sq': '0x1.a709060de16f6p+13',
    },
    'supervised': {
        'loss': '0x1.0cd7480000000p+1',
        'loss_ce': '0x1.0cd7480000000p+1',
        'grad_sq': '0x1.5fa371caf3d1dp+10',
    },
}


def preset_losses(name: str) -> dict[str, str]:
    """Build the preset's distiller under seed 0, run one forward + backward on a seeded batch → hex floats."""
    from mdistiller.distillers import build_distiller

    kind, overrides = PRESETS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        d = build_distiller(tiny_config(kind, **overrides))
        d.train()
        gen = torch.Generator().manual_seed(1)
        images = torch.rand(3, 3, 32, 32, generator=gen)
        torch.manual_seed(2)  # ViTKD's random mask
        if d.needs_targets:
            out = d(images, {"label": torch.tensor([0, 3, 7])})
        else:
            out = d(images)
        out["loss"].backward()
        grad_sq = sum(float(p.grad.double().pow(2).sum()) for _, p in d.trainable_parameters() if p.grad is not None)
    finally:
        torch.set_num_threads(threads)
    result = {k: float(v.detach()).hex() for k, v in sorted(out.items())}
    result["grad_sq"] = grad_sq.hex()
    return result


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_losses_are_bit_for_bit_unchanged(name):
    assert preset_losses(name) == EXPECTED[name]


if __name__ == "__main__":  # pragma: no cover - regenerates the table above
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for preset in PRESETS:
        print(f"    {preset!r}: {preset_losses(preset)!r},")
