"""What training prints: a progress bar only on a terminal (piped output holds no carriage return), one img/s that
the log lines, the epoch records and the end-of-run summary agree on, the start-of-run block and the end block."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from mdistiller.config import load_config
from mdistiller.engine.console import ImageRate, key_value_block, layer_tables, progress_bar_allowed
from mdistiller.engine.trainer import Trainer
from tests.test_train import cpu_env, run_train, tiny_yaml

# the plain-line / bar decision must hold whatever LOG.PROGRESS says: PROGRESS True here, as by default
BAR_ALLOWED = ["LOG.PROGRESS", "True", "LOG.FREQ", "2", "LOG.CKPT_EVERY_STEPS", "0"]


def test_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import pty

    main, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty, open(tmp_path / "log", "w") as file:
            assert progress_bar_allowed(True, tty)  # a real terminal
            assert not progress_bar_allowed(False, tty)  # LOG.PROGRESS False: never
            assert not progress_bar_allowed(True, file)  # a log file or a pipe: plain lines
    finally:
        os.close(main)
        os.close(secondary)
    assert not progress_bar_allowed(True, object())  # no isatty at all


def test_piped_training_has_no_carriage_return(tmp_path: Path) -> None:
    res = run_train(["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(tmp_path / "run"), "SOLVER.MAX_STEPS", "4",
                     *BAR_ALLOWED], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stdout + res.stderr
    assert re.search(r"^step 2/4 \(epoch 0\) \| loss .* img/s$", res.stdout, flags=re.M), res.stdout
    assert "== SiNGER vit_small → vit_tiny ==" in res.stdout and "done, step 4/4" in res.stdout


def test_bar_on_a_terminal_and_no_plain_lines_there(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same run with stderr on a terminal: tqdm draws there (carriage returns) and the step lines stay in
    train.log only."""
    import fcntl
    import pty
    import struct
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has 0 columns
    os.set_blocking(main, False)
    tty = os.fdopen(secondary, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", tty)
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "2", *BAR_ALLOWED])
    try:
        Trainer(cfg, cpu_env(), tmp_path / "run").fit()
        tty.flush()
        drawn = os.read(main, 1 << 16).decode(errors="replace")
    finally:
        tty.close()
        os.close(main)
    assert "\r" in drawn and "2/2" in drawn
    assert "img/s=" in drawn and "it/s" not in drawn  # our img/s only, not tqdm's own rate
    out = capsys.readouterr().out
    assert "step 2/2 (epoch" not in out and "done, step 2/2" in out
    assert "step 2/2 (epoch 0)" in (tmp_path / "run/train.log").read_text()


def test_image_rate_windows_epochs_and_session_agree() -> None:
    now = [0.0]
    rate = ImageRate(clock=lambda: now[0])
    windows = []
    for images, seconds in ((64, 2.0), (64, 0.5), (32, 4.0)):
        rate.add(images)
        now[0] += seconds
        windows.append(rate.window())
    assert windows == [32.0, 128.0, 8.0]
    assert rate.epoch() == pytest.approx(160 / 6.5)
    rate.add(16)
    now[0] += 1.0
    rate.window()
    assert rate.epoch() == pytest.approx(16.0)  # only the windows since the last epoch
    assert rate.rate == pytest.approx(176 / 7.5)  # every window of the session: the duration-weighted mean


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    """Two epochs of 4 steps, a log line every 3 steps (so windows straddle nothing: epochs close a window)."""
    tmp = tmp_path_factory.mktemp("console")
    cfg = load_config([tiny_yaml(tmp)], ["SOLVER.MAX_STEPS", "8", "LOG.PROGRESS", "False", "LOG.FREQ", "3",
                                         "LOG.CKPT_EVERY_STEPS", "0"])
    Trainer(cfg, cpu_env(), tmp / "run").fit()
    return tmp / "run"


def test_one_img_per_s_for_log_lines_epochs_and_summary(logged_run: Path) -> None:
    records = [json.loads(line) for line in (logged_run / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in records if "img_per_s" in r]
    epochs = [r for r in records if "epoch_end" in r]
    assert [r["step"] for r in lines] == [3, 4, 6, 8] and len(epochs) == 2
    batch, prev, seconds = 16, 0, {}
    for r in lines:  # each window's images and, from its img/s, its seconds
        seconds[r["step"]] = (r["step"] - prev) * batch / r["img_per_s"]
        prev = r["step"]
    for rec, (lo, hi) in zip(epochs, ((0, 4), (4, 8))):
        span = [s for step, s in seconds.items() if lo < step <= hi]
        assert rec["epoch/img_per_s"] == pytest.approx((hi - lo) * batch / sum(span), rel=1e-9)
    total = 8 * batch / sum(seconds.values())
    log = (logged_run / "train.log").read_text()
    printed = float(re.search(r"throughput\s+([\d.]+) img/s", log).group(1))
    assert printed == pytest.approx(total, abs=0.051)  # printed with one decimal
    for r in lines:  # the log lines print the record's figure
        assert f"| {r['img_per_s']:.1f} img/s" in log


def test_start_block_names_models_parameters_batch_and_run_dir(logged_run: Path) -> None:
    log = (logged_run / "train.log").read_text()
    start = log[log.index("== SiNGER vit_small → vit_tiny =="):]
    for pattern in (r"run directory\s+\S*run \(new run\)", r"teacher\s+vit_small: [\d.]+k parameters, frozen",
                    r"student\s+vit_tiny: [\d.]+k parameters", r"trainable\s+[\d.]+k = student [\d.]+k \+ proj",
                    r"frozen\s+[\d.]+k", r"layers\s+SiNGER: teacher 1 → student 1, teacher 3 → student 2",
                    r"batch\s+16 per rank × 1 = 16 global", r"steps\s+8 \(4 per epoch, 2 epoch\(s\)\)",
                    r"precision\s+fp32", r"devices\s+1 × cpu", r"console\s+a plain line every 3 steps"):
        assert re.search(pattern, start), pattern


def test_end_block_is_short_lines(logged_run: Path) -> None:
    log = (logged_run / "train.log").read_text()
    block = log[log.index("done, step 8/8"):].splitlines()
    assert max(len(line) for line in block) < 150  # no 700-character agreement line
    text = "\n".join(block)
    assert re.search(r"agreement\s+held-out batch\s+layer 1\s+layer 3", text)
    assert re.search(r"cos_teacher\s+[\d.]+\s+[\d.]+", text) and "refinement (held-out batch)" in text


def test_layer_tables_and_blocks() -> None:
    lines = layer_tables({"cos/L8": 0.5, "cos/L11": 0.25, "refine/L8/ratio": 2.0, "other": 1.0}, {"": "agree"})
    assert lines[0].split() == ["agree", "layer", "8", "layer", "11"]
    assert lines[1].split() == ["cos", "0.5", "0.25"]
    assert lines[2].split() == ["refine", "layer", "8"] and lines[3].split() == ["ratio", "2"]
    assert lines[4].strip() == "other 1"
    assert key_value_block("t", [("a", "1"), ("long", ["x", "y"])]) == "== t ==\n   a     1\n   long  x\n         y"
