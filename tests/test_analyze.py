"""``tools/analyze.py`` end to end on tiny random-init models and tiny runs (CPU, well under a minute)."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdistiller.analysis.render import EMULATED_LABEL, to_jsonable
from mdistiller.engine.distributed import DistEnv
from mdistiller.engine.trainer import Trainer
from tests.conftest import TINY_TEACHER, tiny_config
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--model", "vit_small", "--weights", "random", "--model-kwargs",
              *(f"{k}={v}" for k, v in TINY_TEACHER.items())]
SUBCOMMANDS = ("artifacts", "nullspace", "null-vs-reality", "subspace", "adapter", "similarity", "figures")


CLI = load_tool("analyze.py")


def _train(kind: str, run_dir: Path) -> Path:
    cfg = tiny_config(kind, **{
        "SOLVER.MAX_STEPS": 2, "SOLVER.BATCH_SIZE": 8, "SOLVER.AMP": "none", "DATASET.TYPE": "toy_scenes",
        "DATASET.TRAIN_SIZE": 16, "DATASET.VAL_SIZE": 4, "DATASET.NUM_WORKERS": 0, "LOG.PROGRESS": False,
        "LOG.CKPT_EVERY_STEPS": 1, "LOG.AGREEMENT_EVERY_STEPS": 1, "DISTILLER.ARTIFACTS.ENABLE": True,
        "DISTILLER.ARTIFACTS.LAYER": 0,
        "EXPERIMENT.NAME": f"tiny_{kind.lower()}"})
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)
    Trainer(cfg, env, run_dir).fit()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    return {"singer": _train("SiNGER", root / "singer"), "fitnet": _train("FitNet", root / "fitnet")}


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = CLI.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _check_outputs(out_dir: Path, command: str, keys: set[str], figures: list[str]) -> dict:
    data = json.loads((out_dir / f"{command.replace('-', '_')}.json").read_text())
    assert keys <= set(data), keys - set(data)
    assert (out_dir / f"{command.replace('-', '_')}.txt").read_text().strip()
    for name in figures:
        png = out_dir / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(Path(p).is_file() for p in data["figures"])
    assert not any(k.startswith("_") for k in data)
    return data


def test_help_for_every_subcommand():
    for cmd in (None, *SUBCOMMANDS):
        args = [sys.executable, str(ROOT / "tools/analyze.py"), *([cmd] if cmd else []), "--help"]
        res = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "usage:" in res.stdout, (cmd, res.stderr)


def test_artifacts_finds_emulated_artifacts_at_the_implanted_layer(tmp_path, capsys):
    out = tmp_path / "art"
    rc, stdout, _ = _run(["artifacts", *TINY_MODEL, "--images", "toy", "--num-images", "6", "--size", "64",
                          "--emulate", "1", "--out", str(out), "--json"], capsys)
    assert rc == 0
    data = _check_outputs(out, "artifacts", {"table", "recommendation", "implant", "emulated_artifacts", "label"},
                          ["artifacts_trend.png", "artifacts_hist.png", "artifacts_normmaps.png"])
    assert json.loads(stdout) == data  # --json prints exactly the saved report
    assert data["emulated_artifacts"] is True and data["label"] == EMULATED_LABEL
    rows = {r["layer"]: r for r in data["table"]}
    assert [r["layer"] for r in data["table"]] == [0, 1, 2, 3]
    assert rows[0]["max_median_ratio"] < 4 <= rows[1]["max_median_ratio"]
    assert data["recommendation"]["onset"] == 1 and data["recommendation"]["layers"] == [2, 3]
    assert data["implant"]["recall"] == 1.0 and data["implant"]["onset_matches_implant"]
    assert (out / "artifacts.txt").read_text().startswith(f"[{EMULATED_LABEL}]")


def test_artifacts_without_emulation_is_not_labelled(tmp_path, capsys):
    rc, stdout, _ = _run(["artifacts", *TINY_MODEL, "--images", "skimage", "--num-images", "3", "--size", "32",
                          "--out", str(tmp_path), "--no-figures"], capsys)
    assert rc == 0 and EMULATED_LABEL not in stdout
    data = json.loads((tmp_path / "artifacts.json").read_text())
    assert data["emulated_artifacts"] is False and data["label"] is None and data["num_images"] == 3
    assert {"median", "max_median_ratio", "share_above_4x", "cls_over_median"} <= set(data["table"][0])


def test_nullspace(tmp_path, capsys):
    rc, stdout, _ = _run(["nullspace", *TINY_MODEL, "--images", "toy", "--num-images", "3", "--size", "32",
                          "--eps", "0.05", "--out", str(tmp_path)], capsys)
    assert rc == 0 and "k_energy" in stdout
    data = _check_outputs(tmp_path, "nullspace", {"spectrum_table", "sublayer_table", "eps", "rho"},
                          ["nullspace_spectra.png", "nullspace_sublayer.png"])
    row = data["spectrum_table"][0]
    assert row["d"] == 96 and 1 <= row["k_energy"] <= 96
    assert row["r_eps"] == (96 - row["k_eps"] + 1 if row["k_eps"] else 0)
    sub = data["sublayer_table"][0]
    assert {"delta_sa", "delta_ffn", "g_ffn1", "g_ffn2"} <= set(sub) and sub["g_ffn2"] > 0


def test_null_vs_reality(runs, capsys):
    rc, stdout, _ = _run(["null-vs-reality", "--model", str(runs["singer"]), "--images", "toy", "--num-images", "2",
                          "--size", "32", "--rank", "8", "--scales", "0.1", "--jacobian-samples", "2"], capsys)
    assert rc == 0
    out = runs["singer"] / "analysis"
    data = _check_outputs(out, "null-vs-reality", {"table", "verdict", "layer", "emulated_artifacts"},
                          ["null_vs_reality.png"])
    assert data["emulated_artifacts"] is True and f"[{EMULATED_LABEL}]" in stdout  # the run's teacher had them
    rows = {r["basis"]: r for r in data["table"]}
    assert set(rows) == {"singer_null", "singer_null_ln", "jacobian", "random", "principal"}
    assert rows["singer_null"]["lin_response"] < rows["random"]["lin_response"] < rows["principal"]["lin_response"]
    for r in rows.values():
        assert r["skip_floor"] > 0 and -1 <= r["residual_cos"] <= 1 and 0 <= r["output_cka"] <= 1 + 1e-9
        assert r["attn_l2"] > 0 and r["ffn_l2"] > 0 and r["act_response"] > 0
    assert data["recompute_error"] < 1e-4 and data["verdict"] and "random" in data["verdict"][0]


def test_subspace(tmp_path, capsys):
    rc, _, _ = _run(["subspace", *TINY_MODEL, "--images", "toy", "--num-images", "3", "--size", "32",
                     "--emulate", "1", "--ranks", "2", "4", "--out", str(tmp_path)], capsys)
    assert rc == 0
    data = _check_outputs(tmp_path, "subspace", {"table", "layers", "ranks", "label"}, ["subspace.png"])
    assert data["layers"] == [1, 2, 3] and data["ranks"] == [2, 4]
    row = data["table"][0]
    assert -1 <= row["corr_null"] <= 1 and 0 <= row["E_prin_rest"] <= 1
    # the implant direction is W̃_2's top left singular vector: implanted patches live in the principal basis
    assert row["layer"] == 1 and row["E_prin_outliers"] > 0.9


def test_adapter(runs, capsys):
    rc, stdout, _ = _run(["adapter", str(runs["singer"]), "--num-images", "4"], capsys)
    assert rc == 0 and "E_safe" in stdout
    data = _check_outputs(runs["singer"] / "analysis", "adapter",
                          {"alignment_table", "cosine_table", "norm_table", "gram_table", "emulated_artifacts"},
                          ["adapter_norms.png", "adapter_alignment.png"])
    assert data["label"] == EMULATED_LABEL
    align = data["alignment_table"]
    assert {(r["layer"], r["matrix"]) for r in align} == {(1, "up"), (1, "down_T"), (3, "up"), (3, "down_T")}
    for r in align:  # two steps after the nullspace initialisation (eq. 8): still in N_{l+1}
        assert r["E_safe"] > 0.95 > r["random_reference"] > r["E_prob"]
    pairs = {r["pair"] for r in data["cosine_table"]}
    assert pairs == {"F_1 vs F̂_1", "F_2 vs F̂_2", "F_3 vs F̂_3"}
    assert all({"mean", "std", "median"} <= set(r) for r in data["cosine_table"])
    assert all(r["gd"] >= 0 and math.isfinite(r["gd_cos"]) for r in data["gram_table"])
    # refinement per saved checkpoint (prev.pth at step 1, last.pth at step 2) and over the logged training steps
    refine = data["refinement_table"]
    assert [(r["step"], r["layer"]) for r in refine] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(r["ratio_before"] > 1 and -1 <= r["cos_inlier"] <= 1 for r in refine)
    assert all("cos_next" in r and "cos_final" in r for r in refine if r["layer"] == 1)
    assert [r["step"] for r in data["refinement_curve"]] == [1, 2] and "Refinement per saved checkpoint" in stdout
    assert (runs["singer"] / "analysis" / "adapter_refinement.png").exists()


def test_adapter_rejects_a_fitnet_run(runs, capsys):
    rc, _, err = _run(["adapter", str(runs["fitnet"]), "--num-images", "2"], capsys)
    assert rc == 1 and err.count("\n") == 1 and "needs a SiNGER run" in err


def test_similarity_side_by_side(runs, tmp_path, capsys):
    rc, _, _ = _run(["similarity", str(runs["singer"]), str(runs["fitnet"]), "--num-images", "4",
                     "--out", str(tmp_path)], capsys)
    assert rc == 0
    data = _check_outputs(tmp_path, "similarity", {"table", "runs", "emulated_artifacts"},
                          ["similarity.png", "similarity_gram.png"])
    assert [r["name"] for r in data["runs"]] == ["tiny_singer", "tiny_fitnet"]
    assert len(data["table"]) == 4 and all(0 <= r["cka"] <= 1 + 1e-9 and r["gd"] >= 0 for r in data["table"])
    assert "cos_target" in data["table"][0] and "cos_target" not in data["table"][-1]
    first = data["table"][0]  # the tiny runs' teacher has emulated artifacts after block 0: they reach block 1
    assert first["emulated_artifacts"] and first["teacher_implanted_over_median"] > 2
    assert {"student_implanted_over_median", "projected_implanted_over_median", "student_max_median"} <= set(first)


def test_figures(runs, tmp_path, capsys):
    rc, _, _ = _run(["figures", str(runs["singer"]), str(runs["fitnet"]), "--image-index", "1",
                     "--out", str(tmp_path)], capsys)
    assert rc == 0
    _check_outputs(tmp_path, "figures", {"runs", "image_indices", "label"},
                   ["maps_tiny_singer_img1.png", "crosssim_tiny_singer_img1.png", "maps_tiny_fitnet_img1.png",
                    "similarity_img1.png"])


def test_user_errors_are_one_sentence(tmp_path, capsys):
    rc, _, err = _run(["adapter", str(tmp_path)], capsys)
    assert rc == 1 and "not a run directory" in err
    rc, _, err = _run(["null-vs-reality", *TINY_MODEL, "--layer", "3", "--num-images", "1", "--size", "32",
                       "--out", str(tmp_path)], capsys)
    assert rc == 1 and "has no next block" in err


def test_to_jsonable_drops_private_keys_and_non_finite():
    out = to_jsonable({"a": torch.tensor([1.0, float("nan")]), "_raw": torch.zeros(3), "b": (float("inf"), 2)})
    assert out == {"a": [1.0, None], "b": [None, 2]}


def test_loading_a_run_leaves_the_callers_random_streams_alone(runs):
    """Loading seeds every RNG with the run's seed (a random-init teacher comes back identical); afterwards python,
    numpy and torch continue exactly where the caller left them."""
    import random

    import numpy as np

    from mdistiller.analysis.runs import load_run_seeded

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = draws()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    load_run_seeded(runs["singer"])
    assert draws() == expected


# ---- the typed functions behind the command line, and the command line inside the package
def _written(result_or_dir) -> dict[str, object]:
    """The files of an analysis folder by name: JSON (figure paths reduced to their names), text (the figures line
    left out, it names the folder) and PNG bytes."""
    out: dict[str, object] = {}
    for path in sorted(Path(result_or_dir).iterdir()):
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            data["figures"] = [Path(p).name for p in data["figures"]]
            out[path.name] = data
        elif path.suffix == ".txt":
            out[path.name] = [line for line in path.read_text().splitlines() if not line.startswith("figures: ")]
        else:
            out[path.name] = path.read_bytes()
    return out


def test_typed_function_writes_what_the_command_line_writes(runs, tmp_path, capsys):
    """``adapter.run(run_dir, ...)`` — no Namespace — writes the same files with the same content as
    ``tools/analyze.py adapter`` with the same options, and returns them."""
    from mdistiller.analysis.commands import AnalysisResult, adapter

    rc, _, _ = _run(["adapter", str(runs["singer"]), "--num-images", "2", "--out", str(tmp_path / "cli")], capsys)
    assert rc == 0
    result = adapter.run(runs["singer"], num_images=2, out=tmp_path / "py")
    assert isinstance(result, AnalysisResult) and result.out_dir == tmp_path / "py"
    assert {p.name for p in result.paths} == {p.name for p in (tmp_path / "py").iterdir()}
    assert [p.suffix for p in result.figures] == [".png"] * len(result.figures) and len(result.figures) >= 3
    assert _written(tmp_path / "py") == _written(tmp_path / "cli")
    assert result.report["alignment_table"] and "Refinement per saved checkpoint" in result.format()


def test_typed_function_refuses_a_bad_value_before_writing(tmp_path):
    """A value that cannot work raises :class:`UsageError` with one sentence naming the option; nothing is
    written."""
    from mdistiller.analysis.commands import UsageError, nullspace

    with pytest.raises(UsageError, match=r"^--rank 9999 exceeds the width 96 of the model") as e:
        nullspace.run("vit_small", weights="random", model_kwargs=TINY_TEACHER, images="toy", num_images=1, size=32,
                      rank=9999, out=tmp_path / "out")
    assert "\n" not in str(e.value) and str(e.value).endswith(".")
    with pytest.raises(UsageError, match="--num-images is 0"):
        nullspace.run("vit_small", num_images=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_option_is_a_keyword_of_the_typed_function():
    """The command line's options and each command's ``run(...)`` keywords (its named parameters and the keys of
    its ``**options``) match one to one (the options the command line keeps for itself and the common
    ``--batch-size`` of ``figures`` aside), and every shared keyword is a parameter of the function that uses it
    (:func:`load_model_inputs` for the model and images, :func:`finish` for the output), so no option is dropped on
    the way to the library."""
    import inspect

    from mdistiller.analysis.cli import call_arguments, parse_args
    from mdistiller.analysis.commands import COMMANDS, ModelOptions, OutputOptions
    from mdistiller.analysis.commands.base import load_model_inputs
    from mdistiller.analysis.commands.output import finish

    positional = {"adapter": ["RUN"], "similarity": ["RUN"], "figures": ["RUN"]}
    for name, command in COMMANDS.items():
        args = parse_args([name, *positional.get(name, ["--model", "M"])])
        assert set(call_arguments(args)) == command.keywords, name
    assert "batch_size" not in COMMANDS["figures"].keywords
    loader = inspect.signature(load_model_inputs).parameters.values()
    loaded = {p.name for p in loader if p.kind is p.KEYWORD_ONLY} - {"rank", "layers"}  # rank, layers: checks only
    assert set(ModelOptions.__annotations__) == loaded
    assert set(OutputOptions.__annotations__) == set(inspect.signature(finish).parameters) - {"compute", "source"}


def test_a_typed_function_refuses_an_unknown_keyword_before_writing(tmp_path):
    """A misspelt keyword of a model-level or run-level ``run`` is a ``TypeError`` naming it, raised before any
    compute; nothing is written."""
    from mdistiller.analysis.commands import artifacts, similarity

    with pytest.raises(TypeError, match="'num_image'"):
        artifacts.run("vit_small", weights="random", num_image=1, out=tmp_path / "a")
    with pytest.raises(TypeError, match="'figure'"):
        similarity.run(tmp_path / "missing", figure=False, out=tmp_path / "s")
    assert not list(tmp_path.iterdir())


def _tools_references(path: Path) -> list[str]:
    """Where ``path`` runs a script or builds a path into ``tools/``: a subprocess / runpy / exec / file-import
    call, or a ``"tools"`` path component (``/ "tools"``, ``Path("tools/...")``, ``os.path.join(..., "tools")``)."""
    def runs_code(name: str) -> bool:  # subprocess.*, runpy.*, os.system/exec*/spawn*, exec, spec_from_file_location
        return (name.split(".")[0] in ("subprocess", "runpy") or name in ("exec", "os.system", "os.popen")
                or name.startswith(("os.exec", "os.spawn"))
                or name.rsplit(".", 1)[-1] in ("spec_from_file_location", "run_path", "run_module"))

    def dotted(node: ast.AST) -> str:
        return f"{dotted(node.value)}.{node.attr}" if isinstance(node, ast.Attribute) else getattr(node, "id", "")

    def tools_str(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and (
            node.value.strip("/") == "tools" or node.value.startswith(("tools/", "./tools/")))

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if runs_code(name):
                found.append(f"{where} calls {name}")
            if name in ("Path", "pathlib.Path", "os.path.join", "joinpath") or name.endswith(".joinpath"):
                found += [f"{where} builds a tools/ path" for a in node.args if tools_str(a)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (tools_str(node.left)
                                                                                or tools_str(node.right)):
            found.append(f"{where} builds a tools/ path")
    return found


def test_analyze_entry_point_needs_no_tools_directory(tmp_path):
    """``mdistiller-analyze`` works from the package alone: neither ``mdistiller/cli.py`` nor ``mdistiller/analysis``
    runs a script or builds a ``tools/`` path, and the entry point answers from a copy of the package that has no
    ``tools/`` beside it."""
    import shutil

    package = ROOT / "mdistiller"
    found = [f for p in [package / "cli.py", *sorted((package / "analysis").rglob("*.py"))]
             for f in _tools_references(p)]
    assert not found, found
    # the check sees what the old entry point did
    old = tmp_path / "old.py"
    old.write_text("import runpy, subprocess\nfrom pathlib import Path\nscript = Path(__file__).parents[1] / 'tools' "
                   "/ 'analyze.py'\nrunpy.run_path(str(script))\nsubprocess.run(['python', 'tools/analyze.py'])\n")
    assert len(_tools_references(old)) == 3

    shutil.copytree(package, tmp_path / "site" / "mdistiller", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys; from mdistiller.cli import analyze; sys.exit(analyze(['nullspace', '--help']))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage: mdistiller-analyze nullspace" in res.stdout, res.stderr
