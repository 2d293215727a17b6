"""The study library: presets become overrides, runs and jobs are planned, statistics equal hand computations and
scipy, the report renders from plain data."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mdistiller import study
from mdistiller.config import load_config
from mdistiller.engine import precision


def test_mode_overrides_reproduce_each_preset_on_the_demo_config():
    for method in ("singer_paper", "singer_released", "singer_scaled"):
        run = study.StudyRun(method, True, 1)
        files, opts = study.run_config(run, ["SOLVER.MAX_STEPS", "5"])
        cfg = load_config(files, opts, validate=False)
        preset = load_config([study.ROOT / study.METHODS[method][1]], validate=False)
        for key in ("RANK", "OUTLIER_Q", "BASIS", "INFO", "GRAM", "SCALE", "INFO_PATCHES", "DETACH_TARGET",
                    "ADAPTER_LR_SCALE"):
            assert cfg.SiNGER[key] == preset.SiNGER[key], (method, key)
        assert cfg.SiNGER.LOSS == preset.SiNGER.LOSS
        assert cfg.DISTILLER.KD_REDUCTION == preset.DISTILLER.KD_REDUCTION
        # what stays the demo's: its layers, teacher and data, plus the budget and the seed
        assert cfg.SiNGER.M_LAYERS == [8] and cfg.DISTILLER.TEACHER == "dinov2_small_imgfocus"
        assert cfg.SOLVER.MAX_STEPS == 5 and cfg.EXPERIMENT.SEED == 1 and cfg.DISTILLER.ARTIFACTS.ENABLE
        assert cfg.EXPERIMENT.NAME == f"{method}_artifacts_s1"


def test_plan_runs_covers_every_cell_and_rejects_unknown_methods():
    runs = study.plan_runs(["fitnet", "singer_scaled"], [0, 1])
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    with pytest.raises(ValueError, match="unknown study method"):
        study.plan_runs(["fitnet", "singr"], [0])


def test_paired_interval_is_the_student_t_interval():
    mean, lo, hi = study.paired_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · sd / √n, sd of (1, 2, 3) = 1
    assert mean == 2.0 and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert study.paired_interval([0.5])[1:] == (-math.inf, math.inf)


def test_summarize_pairs_by_seed_and_teacher_and_renders():
    values = {("fitnet", False, 0): {"p": 10.0}, ("fitnet", False, 1): {"p": 12.0},
              ("singer_scaled", False, 0): {"p": 11.0}, ("singer_scaled", False, 1): {"p": 15.0},
              ("singer_scaled", True, 0): {"p": 1.0},  # no FitNet partner with artifacts: not paired
              ("teacher", False, 0): {"p": 50.0}}  # a reference row: shown, never paired
    s = study.summarize(values, ["p"])
    mean, std, n = s["cells"][("singer_scaled", False)]["p"]
    assert (mean, n) == (13.0, 2) and std == pytest.approx(math.sqrt(8.0))
    d_mean, lo, hi, n = s["paired"][("singer_scaled", "fitnet", False)]["p"]
    assert d_mean == 2.0 and n == 2 and lo < 2.0 < hi  # differences 1 and 3
    assert set(s["paired"]) == {("singer_scaled", "fitnet", False)}
    md = study.render_tables(s, [("p", True)], ["fitnet", "singer_scaled"])
    assert "13.00 ± 2.83 |" in md and "| singer_scaled − fitnet | clean | +2.00 [" in md
    assert "| singer_scaled | emulated artifacts | 1.00 ± 0.00 (n = 1) |" in md  # fewer seeds than the others


def test_ladder_pairs_every_rung_with_the_rung_below():
    ladder = study.MATRICES["ladder"]
    assert ladder.methods == study.LADDER and ladder.pairs[:4] == tuple(zip(study.LADDER[1:], study.LADDER[:-1]))
    assert ladder.pairs[4:] == (("singer_scaled", "fitnet_clamp"), ("singer_scaled", "fitnet"))
    values = {(m, art, seed): {"p": float(i * (seed + 1)) + (5.0 if art else 0.0)}
              for i, m in enumerate(study.LADDER) for art in (False, True) for seed in (0, 1, 2)}
    s = study.summarize(values, ["p"], pairs=ladder.pairs)
    assert list(s["paired"]) == [(m, r, art) for m, r in ladder.pairs for art in (False, True)]
    for (m, r, _art), cell in list(s["paired"].items())[:8]:
        mean, lo, hi, n = cell["p"]
        assert n == 3 and mean == pytest.approx(2.0), (m, r)  # rung i − rung i−1 = seed + 1 → mean over seeds = 2
        assert lo == pytest.approx(2.0 - 4.303 / math.sqrt(3)) and hi == pytest.approx(2.0 + 4.303 / math.sqrt(3))
    md = study.render_tables(s, [("p", True)], list(study.LADDER), paired_title=ladder.paired_title)
    assert "| fitnet_clamp − fitnet_scaled | emulated artifacts | +2.00 [" in md


def test_matrix_methods_exist_and_write_section_replaces_only_its_block(tmp_path):
    for name, m in study.MATRICES.items():
        study.plan_runs(m.methods, [0], m.teachers)  # raises for an unknown method
        assert all(a in m.methods and b in m.methods for a, b in m.pairs), name
    doc = tmp_path / "study.md"
    doc.write_text("# Title\n\nkept\n")
    study.write_section(doc, "ladder", "first")
    study.write_section(doc, "long", "other")
    study.write_section(doc, "ladder", "second\n")
    text = doc.read_text()
    assert text.startswith("# Title\n\nkept\n") and "first" not in text
    assert text.count("<!-- study:ladder -->\nsecond\n<!-- /study:ladder -->") == 1 and "other" in text


@pytest.mark.parametrize(("flags", "kind", "amp", "budget"), [
    ("fpu avx512f amx_bf16 amx_tile avx512_bf16", "amx", "bf16", (100, 32)),
    ("fpu avx512f avx512_bf16", "avx512_bf16", "bf16", (100, 32)),
    ("fpu avx2", "", "none", (60, 32)),
])
def test_demo_budget_follows_the_cpus_bf16(tmp_path, monkeypatch, flags, kind, amp, budget):
    """bf16 only where the CPU computes it natively (AMX or AVX512-BF16), with 100 steps; fp32 gets 60; explicit
    values always win."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real = precision.Path

    def fake_path(p, *rest):
        return real(cpuinfo) if str(p) == "/proc/cpuinfo" else real(p, *rest)

    monkeypatch.setattr(precision, "Path", fake_path)
    assert study.native_bf16() == kind
    assert study.resolve_amp("auto") == amp and study.resolve_amp("auto", "cuda") == "bf16"
    assert study.demo_budget(study.resolve_amp("auto")) == budget
    assert study.demo_budget(amp, steps=7, batch=5) == (7, 5)


def test_ladder_job_order_runs_the_main_question_first():
    ladder = study.MATRICES["ladder"]
    runs = study.plan_runs(ladder.methods, [0, 1, 2], ladder.teachers)
    ordered = sorted(runs, key=lambda r: ladder.job_order(r, [0, 1, 2]))
    head = ordered[:6]  # artifact teacher, the clamp and scale-aware SiNGER (SiNGER − clamp), every seed
    assert all(r.artifacts for r in head) and {r.method for r in head} == set(ladder.first)
    assert [r.seed for r in head] == [0, 0, 1, 1, 2, 2]
    assert all(r.artifacts for r in ordered[:15]) and not any(r.artifacts for r in ordered[15:])


def test_every_t_quantile_is_scipys_rounded_to_the_tables_three_decimals():
    """``T_95`` holds ``t_{0.975, df}`` as scipy computes it (the table's 3 decimals: within 5e-4), and the interval
    uses exactly the table's value."""
    t = pytest.importorskip("scipy.stats").t
    assert sorted(study.T_95) == list(range(1, 10))
    for df, value in study.T_95.items():
        assert value == pytest.approx(t.ppf(0.975, df), abs=5e-4), df
        assert study.t_quantile_95(df) == value
        diffs = [float(i % 2) for i in range(df + 1)]  # df + 1 pairs
        mean, lo, hi = study.paired_interval(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / df)
        assert hi - mean == pytest.approx(value * sd / math.sqrt(df + 1), rel=1e-12)


def test_t_quantile_beyond_the_table_is_scipys():
    """From 10 degrees of freedom (11 seeds) on the quantile is the expansion, not the normal 1.96: within 1e-5 of
    scipy for every df up to 500 (the normal value would be 0.27 too small at df = 10)."""
    t = pytest.importorskip("scipy.stats").t
    for df in range(10, 501):
        assert study.t_quantile_95(df) == pytest.approx(t.ppf(0.975, df), abs=1e-5), df
    with pytest.raises(ValueError, match="degree of freedom"):
        study.t_quantile_95(0)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_rendering_imports_neither_torch_nor_the_matrix():
    """render.py draws from plain data: no import of torch, the matrix or the jobs anywhere in it (function bodies
    included), and importing it through the package loads neither torch nor the matrix."""
    render = Path(study.__file__).with_name("render.py")
    imported = _imports(render)
    assert not {n for n in imported if n.split(".")[0] == "torch" or n.lstrip(".").split(".")[-1] in
                ("matrix", "jobs", "run", "results")}, imported
    code = ("import sys; import mdistiller.study.render as r; "
            "r.render_tables({'cells': {}, 'paired': {}}, [('p', True)], ['m']); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('mdistiller.study.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['mdistiller.study.render', 'mdistiller.study.settings']"


def _settings(**kw) -> study.StudySettings:
    base = dict(matrix="ladder", methods=("fitnet", "fitnet_clamp"), seeds=(0, 1), steps=3,
                probe_labels=tuple(label for label, *_ in study.PROBES))
    return study.StudySettings(**{**base, **kw})


def test_jobs_plan_only_missing_work_in_the_matrix_order(tmp_path):
    """Every run without a student gets a training job, every probe without a result a job after its training
    (depth after segmentation); a finished training is not planned again; the order puts the artifact teacher and
    the matrix's first methods first."""
    args = _settings()
    matrix = study.MATRICES["ladder"]
    runs = study.plan_runs(args.methods, args.seeds, matrix.teachers)
    done = tmp_path / "runs" / runs[0].name
    done.mkdir(parents=True)
    (done / "student.safetensors").write_bytes(b"")
    trains = study.train_jobs(runs, tmp_path, study.budget_overrides(args), "cpu")
    assert [j.name for j in trains] == [f"train {r.name}" for r in runs[1:]]
    assert trains[0].args[0][trains[0].args[0].index("SOLVER.MAX_STEPS") + 1] == "3"
    probes, results = study.probe_jobs(args, runs, tmp_path)
    assert len(results) == len(probes) == (len(runs) + 2) * len(study.PROBES)  # + the two reference rows
    depth = next(j for j in probes if j.name == f"probe {runs[1].name} toy depth RMSE")
    assert depth.after == f"probe {runs[1].name} toy seg mIoU"
    assert {j.after for j in probes if "F-MNIST" in j.name and runs[1].name in j.name} == {f"train {runs[1].name}"}
    ordered = study.order_jobs(trains + probes, matrix, runs, args.seeds)
    assert ordered[0].name == f"train {runs[1].name}" and runs[1].name == "fitnet_clamp_artifacts_s0"
    assert study.progress(trains + probes, results, runs) == ((1, 8), (0, 40))
    assert study.probe_jobs(_settings(no_probes=True), runs, tmp_path) == ([], {})


def test_report_renders_the_settings_and_marks_a_partial_study(tmp_path):
    args = _settings(amp="bf16")
    note = study.partial_note((3, 8), (10, 40))
    md = study.render_report(args, title="T", teachers=(True, False), command_flags=" --steps 3", minutes=0.25,
                             status=note, tables="TABLES", figure_name="ladder.png", acceptance="ACC")
    assert md.startswith("# T\n") and "every run 3 steps of batch 32 at 112 px\n(bf16), seeds [0, 1]" in md
    assert "teachers: emulated artifacts and clean." in md and "`python tools/study.py --matrix ladder --steps 3`" in md
    assert "**Partial: 3 of 8 trainings and 10 of 40 probes" in md and "0.2 min (cpu)" in md
    assert study.partial_note((8, 8), (40, 40)) == ""  # a finished study is not called partial
    assert "![study](figures/ladder.png)" in md and md.endswith("ACC\n")
    section = study.doc_section(md)
    assert section.startswith("## T\n") and "\n### Does the adapter refine the teacher?" in section
    fig = tmp_path / "out" / "ladder.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    doc = tmp_path / "docs" / "study.md"
    study.write_doc_section(doc, "ladder", md, fig)
    assert (doc.parent / "figures" / "ladder.png").read_bytes() == b"png"
    assert doc.read_text().startswith("<!-- study:ladder -->\n## T\n")


def test_a_report_only_page_says_it_trained_nothing_instead_of_a_wall_time():
    md = study.render_report(_settings(), title="T", teachers=(True,), command_flags="", minutes=None, status="",
                             tables="", figure_name="long.png", acceptance="")
    assert "Written by `--report-only`" in md and "Wall time of this invocation" not in md


def test_the_figure_draws_only_the_teachers_trained_and_the_reference_lines(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    summary = {"cells": {("fitnet", True): {"p": (30.0, 2.0, 3)}, ("clamp", True): {"p": (90.0, 1.0, 3)},
                         ("teacher", False): {"p": (95.0, 0.0, 1)}, ("random_init", False): {"p": (41.0, 0.0, 1)}}}
    shown = {}
    from mdistiller.analysis import viz

    def keep(fig, path):
        ax = fig.axes[0]
        shown["bars"] = [(round(p.get_x() + p.get_width() / 2, 6), p.get_height()) for p in ax.patches]
        shown["lines"] = sorted(round(line.get_ydata()[0], 6) for line in ax.lines if len(set(line.get_ydata())) == 1)
        shown["legend"] = [t.get_text() for t in fig.legends[0].get_texts()]
        plt.close(fig)
        return path

    monkeypatch.setattr(viz, "save_figure", keep)
    study.figure(summary, [("p", True)], ["fitnet", "clamp"], tmp_path / "f.png", "title")
    assert shown["bars"] == [(0.0, 30.0), (1.0, 90.0)]  # one teacher: bars centred on their ticks
    assert shown["lines"] == [41.0, 95.0] and "students of the clean teacher" not in shown["legend"]
    assert sorted(shown["legend"]) == ["ViT-Ti at initialisation", "students of emulated artifacts",
                                       "the teacher itself"]
