"""The job pool of the demo (mdistiller/jobs.py): order after dependencies, logs, failures, and the same result in
a pool of spawned processes as in this process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mdistiller.jobs import Job, run_job, run_jobs


def record(path: str, name: str, seconds: float = 0.0, status: int = 0, meet: str | None = None,
           patience: float = 0.0) -> int:
    """A fake command: prints, sleeps, appends ``[name, start, end]`` to ``path`` and returns ``status``.

    With ``meet`` (another job's name) it first marks its own start (file ``<path>.<name>.started``) and waits up to
    ``patience`` seconds for the start mark of ``meet``: two jobs that meet each other are running at the same time
    by construction, however slowly their processes start; when the other job can only start after this one ends,
    this one gives up after ``patience`` and the two do not overlap."""
    t0 = time.time()
    print(f"working on {name}")
    if meet is not None:
        Path(f"{path}.{name}.started").touch()
        partner, deadline = Path(f"{path}.{meet}.started"), time.monotonic() + patience
        while not partner.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(seconds)
    if status == 99:
        raise RuntimeError(f"{name} broke")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps([name, t0, time.time()]) + "\n")
    print(f"{name} finished")
    return status


def _jobs(tmp: Path, fail: str | None = None, patience: float | None = None) -> list[Job]:
    """Two trainings, a probe after each, and a probe whose training is not in the batch. With ``patience`` the two
    trainings meet (:func:`record`): each waits up to that many seconds for the other to start."""
    log = str(tmp / "events.jsonl")

    def job(name: str, after: str | None = None, seconds: float = 0.3, meet: str | None = None) -> Job:
        status = 3 if name == fail else 0
        rendezvous = (meet, patience) if patience is not None else ()
        return Job(name, record, (log, name, seconds, status, *rendezvous), str(tmp / "logs" / f"{name}.log"),
                   after)

    return [job("train a", seconds=0.6, meet="train b"), job("train b", seconds=0.2, meet="train a"),
            job("probe a", "train a"), job("probe b", "train b"),
            job("probe teacher", "train teacher")]  # "train teacher" is not in the batch


def _events(tmp: Path) -> dict[str, tuple[float, float]]:
    rows = [json.loads(s) for s in (tmp / "events.jsonl").read_text().splitlines()]
    return {name: (t0, t1) for name, t0, t1 in rows}


def _overlap(ev: dict[str, tuple[float, float]], a: str, b: str) -> bool:
    """Whether jobs ``a`` and ``b`` ran at the same time: each started before the other ended."""
    return ev[a][0] < ev[b][1] and ev[b][0] < ev[a][1]


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_their_dependencies_with_their_own_logs(tmp_path: Path, workers: int) -> None:
    lines: list[str] = []
    # with two workers the trainings meet, with a patience no loaded machine should exhaust (one worker: no meeting)
    jobs = _jobs(tmp_path, patience=120.0 if workers == 2 else None)
    secs = run_jobs(jobs, workers=workers, threads=1, report=lines.append)
    ev = _events(tmp_path)
    assert set(ev) == set(secs) == {"train a", "train b", "probe a", "probe b", "probe teacher"}
    assert ev["probe a"][0] >= ev["train a"][1] and ev["probe b"][0] >= ev["train b"][1]
    assert (tmp_path / "logs" / "probe a.log").read_text() == "working on probe a\nprobe a finished\n"
    assert sum(s.startswith("[") for s in lines) == 5 and any(s.endswith(": train b finished") for s in lines)
    if workers == 2:  # the two trainings overlap in time
        assert _overlap(ev, "train a", "train b"), ev


def test_the_overlap_check_fails_for_jobs_run_one_at_a_time(tmp_path: Path) -> None:
    """The trainings of the test above meet, but with one worker the second starts only after the first gave up
    waiting and ended: the same check then finds no overlap (it is not true by construction alone)."""
    run_jobs(_jobs(tmp_path, patience=0.3), workers=1, threads=1, report=lambda s: None)
    ev = _events(tmp_path)
    assert not _overlap(ev, "train a", "train b"), ev
    assert ev["train a"][1] - ev["train a"][0] >= 0.3 + 0.6  # train a waited its whole patience for train b


def test_a_failed_job_stops_the_batch_with_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        run_jobs(_jobs(tmp_path, fail="train b"), workers=2, threads=1, report=lambda s: None)
    msg = str(err.value.code)
    assert "train b failed with exit status 3" in msg and "train b.log" in msg and "\n" not in msg
    assert "probe b" not in _events(tmp_path)  # its dependant never ran
    crash = Job("x", record, (str(tmp_path / "e"), "x", 0.0, 99), str(tmp_path / "x.log"))
    code, last, _ = run_job(crash)
    assert code == 1 and "RuntimeError: x broke" in last  # the traceback is in the job's log
    picked = Job("y", record, (str(tmp_path / "e"), "y"), str(tmp_path / "y.log"), summary="working")
    assert run_job(picked)[:2] == (0, "working on y")  # the last line holding the summary text, not the last line


def test_bad_batches_are_one_sentence(tmp_path: Path) -> None:
    a = Job("a", record, (str(tmp_path / "e"), "a"), str(tmp_path / "a.log"), after="b")
    b = Job("b", record, (str(tmp_path / "e"), "b"), str(tmp_path / "b.log"), after="a")
    with pytest.raises(ValueError, match="wait for each other"):
        run_jobs([a, b], workers=2, report=lambda s: None)
    with pytest.raises(ValueError, match="share a name"):
        run_jobs([a, a], workers=2, report=lambda s: None)


def test_an_interrupted_job_says_rerun_and_a_rerun_appends_to_its_log(tmp_path: Path) -> None:
    events = str(tmp_path / "e")
    stopped = Job("t", record, (events, "t", 0.0, 130), str(tmp_path / "t.log"))
    with pytest.raises(SystemExit) as err:
        run_jobs([stopped], workers=1, report=lambda s: None)
    assert "stopped by a signal" in str(err.value.code) and "rerun the same command" in str(err.value.code)
    again = Job("t", record, (events, "t", 0.0, 0), str(tmp_path / "t.log"), summary="working")
    assert run_job(again)[:2] == (0, "working on t")
    assert (tmp_path / "t.log").read_text().count("working on t") == 2  # both sessions kept


def die(path: str) -> int:
    """A fake command whose process dies without returning (as when the kernel kills it for memory)."""
    import os

    print("about to die")
    os._exit(9)


def test_a_worker_that_dies_is_one_sentence(tmp_path: Path) -> None:
    job = Job("oom", die, (str(tmp_path),), str(tmp_path / "oom.log"))
    with pytest.raises(SystemExit) as err:
        run_jobs([job], workers=2, report=lambda s: None)
    msg = str(err.value.code)
    assert msg.startswith("oom ended without a result (BrokenProcessPool") and "oom.log" in msg and "\n" not in msg


def test_split_threads_never_more_processes_than_threads() -> None:
    from mdistiller.jobs import split_threads

    assert split_threads(2, 2) == (2, 1) and split_threads(2, 1) == (1, 1) and split_threads(2, 8) == (2, 4)
    assert split_threads(0, 4) == (1, 4)


def test_a_target_string_must_be_a_declared_job_target(tmp_path: Path) -> None:
    """A ``"module:function"`` target is a name-based link: only those declared in mdistiller/hooks.py run."""
    from mdistiller.hooks import targets

    with pytest.raises(ValueError) as err:
        Job("x", "tests.test_jobs:record", (str(tmp_path / "e"), "x"), str(tmp_path / "x.log"))
    msg = str(err.value)
    assert "'tests.test_jobs:record' is not a declared job target" in msg and "mdistiller/hooks.py" in msg
    assert "\n" not in msg and msg.count(". ") == 0
    with pytest.raises(ValueError, match="not a declared job target"):  # a declared check is not a job target
        Job("c", "mdistiller.dataset:check_dataset_config", (), str(tmp_path / "c.log"))
    for target in targets("job"):
        assert Job("ok", target, (), str(tmp_path / "ok.log")).target == target
