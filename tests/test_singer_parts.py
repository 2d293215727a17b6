"""SiNGER's paper path and its named parts: no mode branches in the method, one owner of "block l+1 on [prefix, F̂]",
and FLOPs that are the sum of the parts' own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from mdistiller.config import load_config
from mdistiller.distillers import SiNGER, build_distiller
from mdistiller.models.flops import vit_shape

ROOT = Path(__file__).resolve().parents[1]
MODE_ATTRS = {"scale", "gram", "info", "info_patches"}


def _mode_tests(cls_node: ast.ClassDef) -> list[str]:
    """``self.<mode> ==`` / ``!=`` comparisons inside the methods of a class."""
    found = []
    for node in ast.walk(cls_node):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        for side in (node.left, *node.comparators):
            if (isinstance(side, ast.Attribute) and side.attr in MODE_ATTRS and isinstance(side.value, ast.Name)
                    and side.value.id == "self"):
                found.append(f"line {node.lineno}: self.{side.attr}")
    return found


def test_singer_methods_test_no_mode_attribute():
    tree = ast.parse((ROOT / "mdistiller/distillers/singer.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SiNGER"]
    assert _mode_tests(cls) == []
    # the check itself finds such a branch
    bad = ast.parse("class SiNGER:\n    def f(self):\n        if self.gram == 'none':\n            pass\n")
    assert _mode_tests(bad.body[0]) == ["line 3: self.gram"]


def test_prefix_and_refined_tokens_go_through_block_l1_in_one_place():
    """The concatenation ``[prefix, F̂]`` and the rule "block t + 1" are written once, in ``distillers/base.py``."""
    hits = [p for p in (ROOT / "mdistiller").rglob("*.py") if re.search(r"torch\.cat\(\[[^\]]*prefix", p.read_text())
            and p.parent.name != "models"]  # models/emulated.py re-joins the implanted patches, not a block input
    assert [p.relative_to(ROOT).as_posix() for p in hits] == ["mdistiller/distillers/base.py"]
    # the rule in code (not a label such as f"F_{t + 1}")
    rule = [p for p in (ROOT / "mdistiller").rglob("*.py") if re.search(r"\bt \+ 1\b(?!\})", p.read_text())]
    assert [p.relative_to(ROOT).as_posix() for p in rule] == ["mdistiller/distillers/base.py"]


def test_analysis_sees_the_block_output_forward_computes(make_cfg, monkeypatch):
    """``refined_teacher`` (and the analysis through it) returns the very ``block_{l+1}([prefix, F̂_l])`` that L_info
    used in ``forward`` on the same images (same machine, bit for bit)."""
    from mdistiller.analysis.runs import run_features

    d = build_distiller(make_cfg("SiNGER"))
    d.eval()
    images = torch.rand(3, 3, 32, 32)
    seen = {}
    orig = type(d).next_block_on

    def spy(self, t, prefix, patches):
        out = orig(self, t, prefix, patches)
        seen[t] = out.detach().clone()
        return out

    monkeypatch.setattr(type(d), "next_block_on", spy)
    d(images)
    assert set(seen) == {1}  # the intermediate layer only: the final one has no block l+1
    in_forward = seen.pop(1)
    refined = d.refined_teacher(images)
    assert refined[3].next_refined is None and refined[3].next is None
    assert torch.equal(refined[1].next_refined, in_forward)
    feats = run_features(d, images)["feats"]
    tgrid, sgrid = refined[1].grid, d.student_grid(images)
    expected = d.teacher.to_student_grid(d.teacher.net.split(in_forward, tgrid).patches, tgrid, sgrid).float()
    assert torch.equal(feats[1]["t_next_hat"], expected)
    assert torch.equal(feats[1]["t_hat"], d.teacher.to_student_grid(refined[1].refined, tgrid, sgrid).float())


def test_methods_that_do_not_refine_say_so_with_empty_results(make_cfg):
    from mdistiller.analysis.runs import run_features

    f = build_distiller(make_cfg("FitNet"))
    assert f.refined_teacher(torch.rand(2, 3, 32, 32)) == {} and f.adapter_inits() == {}
    got = run_features(f, torch.rand(2, 3, 32, 32))
    assert got["singer"] is False and "t_hat" not in got["feats"][1] and "t" in got["feats"][1]
    s = build_distiller(make_cfg("SiNGER"))
    inits = s.adapter_inits()
    assert {t: i.source_block for t, i in inits.items()} == {1: 2, 3: 3}
    assert inits[1].adapter is s.adapters["1"]
    torch.testing.assert_close(inits[1].weight, s.init_weight(1))


PRESETS = ["configs/imagenet/vit/singer.yaml", "configs/imagenet/vit/singer_official.yaml",
           "configs/imagenet/vit/singer_scaled.yaml", "configs/demo/singer.yaml"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_part_counts_its_own_flops_and_they_sum_to_extra_flops(make_cfg, preset):
    """For every preset's ``SiNGER.*`` keys: ``extra_flops`` = projections + adapters + the L_info part's own count,
    whether the options come from the built distiller (its parts) or by name (the benchmark's hand call)."""
    section = load_config([ROOT / preset], validate=False).SiNGER
    cfg = make_cfg("SiNGER")
    for key, value in section.items():
        if key not in ("M_LAYERS", "RANK", "LOSS"):
            cfg.SiNGER[key] = value
    d = build_distiller(cfg)
    t, s = vit_shape(d.teacher.net.model), vit_shape(d.student.model)
    kw = dict(teacher_patches=4, student_patches=4, layers=d.plan.teacher)
    parts = SiNGER.flops_parts(t, s, **kw, **d.flops_options())
    total = SiNGER.extra_flops(t, s, **kw, **d.flops_options())
    assert sum(parts.values()) == total and parts["adapters"] > 0 and parts["info"] > 0
    from mdistiller.models.flops import block_flops

    block = block_flops(t.tokens(4), t.width, t.mlp_hidden)
    assert parts["info"] == d.info.flops(d.plan.teacher, 4, t.width, block)
    by_name = SiNGER.extra_flops(t, s, **kw, kd_cls=d.kd_cls, rank=d.rank, info=section.INFO.lower(),
                                 info_fraction=section.INFO_FRACTION, gram=section.GRAM.lower())
    assert by_name == total
    no_info = SiNGER.flops_parts(t, s, **kw, kd_cls=d.kd_cls, rank=d.rank, use_info=False)
    assert no_info["info"] == 0 and total - sum(no_info.values()) == parts["info"]


def test_part_docstrings_say_what_they_change():
    from mdistiller.distillers import singer_parts, units

    paper = [singer_parts.SmallestBasis, singer_parts.AttachedTarget, singer_parts.PaperInfo,
             singer_parts.AllPatches, units.RawUnits]
    other = [singer_parts.ThresholdBasis, singer_parts.RandomBasis, singer_parts.DetachedTarget, singer_parts.NoGram,
             singer_parts.InlierPatches, singer_parts.ReleasedInfo, units.MedianUnits]
    assert all("paper" in (c.__doc__ or "").lower() for c in paper)
    assert all("not the paper" in (c.__doc__ or "").lower() for c in other)


def test_singer_key_checks_are_one_sentence_from_check_config(make_cfg):
    from mdistiller.config import ConfigError

    for key, value, words in (("SiNGER.GRAM", "cosin", "SiNGER.GRAM is 'cosin' but must be one of: cosine, raw"),
                              ("SiNGER.INFO_FRACTION", 0.0, "SiNGER.INFO_FRACTION is 0.0 but must lie in (0, 1]"),
                              ("SiNGER.ADAPTER_LR_SCALE", 0.0, "SiNGER.ADAPTER_LR_SCALE is 0.0 but must be positive"),
                              ("SiNGER.RANK", 97, "SiNGER.RANK 97 exceeds the width 96")):
        with pytest.raises(ValueError, match=re.escape(words)):
            SiNGER.check_config(make_cfg("SiNGER", **{key: value}), 96)
    with pytest.raises(ValueError, match="INFO 'official' compares the final layer"):
        build_distiller(make_cfg("SiNGER", **{"SiNGER.INFO": "official", "SiNGER.M_LAYERS": []}))
    with pytest.raises(ConfigError, match=r"^SiNGER.INFO_FRACTION is 2.0 but must lie in \(0, 1\]"):
        load_config([], ["DISTILLER.TEACHER_KWARGS.depth", "4", "SiNGER.M_LAYERS", "[1]", "SiNGER.INFO_FRACTION",
                         "2.0"])
