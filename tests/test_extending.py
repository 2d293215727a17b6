"""docs/extending.md stays true: its example distiller, copied from the page, trains through the real registry and
builder on the tiny models, and the files and names the recipes point at exist."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _example_module() -> types.ModuleType:
    """The page's ``CosineKD`` file, executed as a module of its own."""
    code = re.search(r"```python\n(.*?)```", _section("Add a distiller"), re.S).group(1)
    module = types.ModuleType("cosine_example")
    exec(compile(code, "docs/extending.md", "exec"), module.__dict__)  # noqa: S102 - the page's own example
    return module


@pytest.fixture
def cosine_cfg():
    """The tiny config with the page's ``COSINE`` section and ``CosineKD`` registered as the page says (removed
    again afterwards)."""
    from mdistiller.config import CN
    from mdistiller.distillers.build import DISTILLERS

    cls = _example_module().CosineKD
    DISTILLERS.register("CosineKD")(cls)
    cfg = tiny_config("CosineKD")
    cfg.COSINE = CN({"LAYERS": [1], "WEIGHT": 1.0})
    try:
        yield cfg
    finally:
        DISTILLERS._items.pop("cosinekd", None)
        DISTILLERS._items.pop("CosineKD", None)


def test_the_example_distiller_builds_trains_and_means_what_it_says(cosine_cfg) -> None:
    from mdistiller.distillers import build_distiller

    torch.manual_seed(0)
    d = build_distiller(cosine_cfg)
    assert d.plan.pairs() == [(1, 1), (3, 2)]  # COSINE.LAYERS plus the last block, mapped by relative depth
    images = torch.rand(4, 3, 32, 32)
    out = d(images)
    assert set(out) == {"loss", "loss_kd"} and torch.isfinite(out["loss"])
    assert 0.0 <= out["loss"].item() <= 2.0 * len(d.plan.pairs())  # 1 − cos lies in [0, 2] per layer

    # the weight is λ: twice the weight, twice the loss on the same weights and batch
    cosine_cfg.COSINE.WEIGHT = 2.0
    torch.manual_seed(0)
    d2 = build_distiller(cosine_cfg)
    d2.load_state_dict(d.state_dict())
    assert d2(images)["loss"].item() == pytest.approx(2 * out["loss"].item(), rel=1e-5)

    # the loss reaches the student and the projections, never the frozen teacher, and training lowers it
    out["loss"].backward()
    assert d.student.model.blocks[0].attn.qkv.weight.grad is not None and d.proj["1"].weight.grad is not None
    assert all(p.grad is None for p in d.teacher.parameters())
    opt = torch.optim.AdamW([p for _, p in d.trainable_parameters()], lr=1e-3)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = d(images)["loss"]
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert d(images)["loss"].item() < first


def test_the_cosine_loss_is_a_hand_computation(cosine_cfg) -> None:
    """With the last block alone, the loss is mean over tokens of 1 − cos between the projected student and the
    teacher's patches, computed here from the models directly."""
    from mdistiller.distillers import build_distiller

    cosine_cfg.COSINE.LAYERS = []
    d = build_distiller(cosine_cfg).eval()
    images = torch.rand(2, 3, 32, 32)
    ((t, s),) = d.plan.pairs()
    sgrid = d.student_grid(images)
    s_tok = d.student.split(d.student(images, [s])[s], sgrid).patches
    t_feats, tgrid = d.teacher(images, [t], student_grid=sgrid)
    t_tok = d.teacher.to_student_grid(d.teacher.net.split(t_feats[t], tgrid).patches, tgrid, sgrid)
    proj = s_tok @ d.proj[str(t)].weight.T + d.proj[str(t)].bias
    expected = (1 - (proj * t_tok).sum(-1) / (proj.norm(dim=-1) * t_tok.norm(dim=-1))).mean()
    assert d(images)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_files_and_names_the_recipes_point_at_exist() -> None:
    root = DOC.parents[1]
    for path in ("mdistiller/distillers/build.py", "mdistiller/config.py", "configs/demo/base.yaml",
                 "mdistiller/study/matrix.py", "tests/conftest.py", "mdistiller/dataset/catalog.py",
                 "mdistiller/eval/probe_data.py", "mdistiller/eval/protocols.py", "data/README.md"):
        assert (root / path).is_file(), path
    from mdistiller.distillers.base import Distiller
    from mdistiller.eval import probe_data

    for name in ("check_config", "teacher_request", "optimizer_groups", "extra_flops", "refine", "refined_teacher",
                 "adapter_inits", "common_kwargs", "kd_tokens", "reduce_layers", "keep", "student_grid"):
        assert hasattr(Distiller, name), name
    assert {"COMMANDS", "SPLITS", "DEFAULT_ROOTS", "result_name"} <= set(dir(probe_data))


def _norms_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The page's ``norms`` command installed as the page says: its module in the commands package, its options in
    ``options.py`` (the page's function, verbatim) and its entry in the registry."""
    import argparse
    import sys

    from mdistiller.analysis.commands import base, options, registry

    section = _section("Add an analysis command")
    module = types.ModuleType("mdistiller.analysis.commands.norms")
    exec(compile(re.search(r"```python\n(.*?)```", section, re.S).group(1), "docs/extending.md", "exec"),  # noqa: S102
         module.__dict__)
    opts = re.search(r"\n(    def norms_options.*?)\n\n", section, re.S).group(1)
    namespace = {"argparse": argparse, "add_model_arguments": options.add_model_arguments}
    exec(compile("\n".join(line[4:] for line in opts.splitlines()), "docs/extending.md", "exec"), namespace)  # noqa: S102
    monkeypatch.setitem(sys.modules, "mdistiller.analysis.commands.norms", module)
    monkeypatch.setitem(registry.COMMANDS, "norms", base.Command("norms", "norms", namespace["norms_options"],
                                                                  "norms"))
    return module


def test_the_example_analysis_runs_from_the_command_line_and_from_python(monkeypatch, tmp_path, capsys) -> None:
    from mdistiller.analysis.cli import main
    from mdistiller.analysis.commands.base import load_model_inputs

    norms = _norms_module(monkeypatch)
    tiny = ["--model-kwargs", "depth=3", "embed_dim=48", "num_heads=2"]
    code = main(["norms", "--model", "vit_small", "--weights", "random", "--images", "toy", "--num-images", "3",
                 "--size", "32", "--layers", "1", "2", "--q", "0.9", "--out", str(tmp_path / "cli"), *tiny])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Patch norms (q = 0.9)" in printed and "max / q" in printed
    assert {p.name for p in (tmp_path / "cli").iterdir()} >= {"norms.json", "norms.txt", "norms.png"}

    # the typed call: the same report, and the numbers are the hand computation on the same model and images
    torch.manual_seed(0)
    result = norms.run("vit_small", weights="random", model_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2},
                       images="toy", num_images=3, size=32, layers=[2], q=0.9, out=tmp_path / "py")
    (row,) = result.report["table"]
    assert result.json.is_file() and result.figures and row["layer"] == 2
    assert row["max_over_quantile"] >= 1.0 and row["max"] >= row["quantile"] >= row["median"] > 0
    torch.manual_seed(0)  # the same random model and scenes, the norms by hand
    x = load_model_inputs("vit_small", weights="random", model_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2},
                          images="toy", num_images=3, size=32)
    with torch.no_grad():
        tokens = x.model.net(x.images, [2])[2]
    norms = x.model.net.split(tokens, x.model.net.grid((32, 32))).patches.float().norm(dim=-1).flatten()
    assert row["max"] == pytest.approx(norms.max().item(), rel=1e-4)
    assert row["quantile"] == pytest.approx(torch.quantile(norms, 0.9).item(), rel=1e-4)
    assert row["max_over_quantile"] == pytest.approx(row["max"] / row["quantile"])

    # a value that cannot work is one sentence before any compute, nothing written
    code = main(["norms", "--model", "vit_small", "--weights", "random", "--size", "0", "--out",
                 str(tmp_path / "bad"), *tiny])
    assert code == 2 and not (tmp_path / "bad").exists()
    assert capsys.readouterr().err.count("\n") == 1
