"""Linear probes from Python: :func:`probe` runs what ``tools/lineval/<task>.py`` runs, with keyword arguments.

    from mdistiller.eval import probe

    res = probe("output/demo/runs/singer", "transfer", "toy_scenes", num_train=200, num_test=100, lrs=[0.01, 0.1])
    res.metrics["top1"], res.chosen_lr, res.path        # a ProbeResult; res.to_dict() is the JSON written

Every option of the command line is a keyword named like its flag (``--num-train`` → ``num_train``, ``--no-norm``
→ ``norm=False``); the result is written where the command writes it (``RUN_DIR/lineval/<task>.json``, see
:mod:`mdistiller.eval.probe_data`). A refusal raises :class:`ProbeError` with the command's one sentence and exit
status; nothing is printed. Progress (cache extraction, per-epoch head losses) goes to the ``mdistiller.eval``
logger at INFO and to the optional ``log`` callback; ``verbose=True`` also prints it to stderr as the command's
``--verbose`` does. :func:`probe_job` is the process-pool job (:mod:`mdistiller.jobs`) of the demo and the study.

The module imports nothing heavy at module level (the command line's ``--help`` stays instant).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mdistiller.eval.probe_data import CLS_FORMATS, COMMANDS, DataOptions, default_out_dir, make_data, result_name

__all__ = ["INTERRUPTED", "LOGGER", "ProbeError", "ProbeResult", "log_result_to_wandb", "probe", "probe_job",
           "summary_line", "warnings_to_stderr"]

#: the logger every probe reports its progress to (INFO) and its warnings (WARNING)
LOGGER = logging.getLogger("mdistiller.eval")
#: what an interrupted probe says (a ``KeyboardInterrupt`` carrying it; the command exits 130)
INTERRUPTED = ("interrupted; complete feature caches are kept and a partial one is rebuilt: rerun the same command "
               "to continue.")


class ProbeError(RuntimeError):
    """A probe refused or failed: ``str(error)`` is its one sentence, ``exit_code`` the command's exit status (2 for
    a bad option such as ``layers``, 1 for everything else: missing data, an unknown model, a diverged head)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class ProbeResult:
    """One probe's result: the fields of its result JSON (docs/lineval.md, "What a result JSON holds").

    ``to_dict()`` is the JSON's content, key for key; :meth:`from_dict` / :meth:`load` read one back (keys this class
    does not know are kept in ``other``; keys a file lacks stay absent from its ``to_dict()``). ``path`` is where the
    result was written (``None`` on the other ranks of a distributed probe, or for a result built in memory).
    """

    task: str = ""
    command: str = ""
    argv: list[str] = field(default_factory=list)
    task_kind: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    lr_grid: list[float] = field(default_factory=list)
    chosen_lr: float = 0.0
    chosen_head: str = ""
    selection_metric: str = ""
    val_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra_tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_loss: list[float] = field(default_factory=list)
    seed: int = 0
    time: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    other: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)
    _keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _json_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("other", "path", "_keys"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> ProbeResult:
        """The result held by a result JSON's content ``data`` (written at ``path``, if given)."""
        known = set(cls._json_fields())
        return cls(**{k: v for k, v in data.items() if k in known},
                   other={k: v for k, v in data.items() if k not in known},
                   path=Path(path) if path is not None else None, _keys=tuple(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProbeResult:
        """Read a result JSON written by a probe (``tools/lineval/*.py`` or :func:`probe`)."""
        return cls.from_dict(json.loads(Path(path).read_text()), path)

    def to_dict(self) -> dict[str, Any]:
        """The result JSON's content (for a result read back: its keys, in the file's order)."""
        values = {name: getattr(self, name) for name in self._json_fields()} | self.other
        if self._keys is None:
            return values
        return {k: values[k] for k in self._keys if k in values} | {k: v for k, v in self.other.items()
                                                                    if k not in self._keys}

    def summary(self) -> str:
        """The one-line summary the command prints (``... -> <path>``)."""
        return summary_line(self, self.path if self.path is not None else "(not written)")


def summary_line(result: ProbeResult | Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """The one-line human summary printed by every command."""
    result = result.to_dict() if isinstance(result, ProbeResult) else result
    m, kind = result["metrics"], result["task_kind"]
    if kind == "cls":
        main = f"top-1 {m['top1']:.2f} | top-5 {m['top5']:.2f}"
        for k, label in (("imagenet_r", "IN-R"), ("imagenet_v2", "IN-v2")):
            if k in result["extra_tests"]:
                main += f" | {label} top-1 {result['extra_tests'][k]['top1']:.2f}"
        val = f"val top-1 {result['val_metrics'][result['chosen_head']]['top1']:.2f}"
    elif kind == "seg":
        main = f"mIoU {100 * m['miou']:.2f} | pixel acc {100 * m['pixel_accuracy']:.2f}"
        val = f"val mIoU {100 * result['val_metrics'][result['chosen_head']]['miou']:.2f}"
    else:
        main = f"RMSE {m['rmse']:.4f} | AbsRel {m['abs_rel']:.4f} | d1 {100 * m['d1']:.2f}"
        val = f"val RMSE {result['val_metrics'][result['chosen_head']]['rmse']:.4f}"
    return (f"{result['task']} [{result['protocol']['name']}] {result['model']['label']}: {main} | "
            f"lr {result['chosen_lr']:g} ({val}) | {result['time']['total_s']:.1f} s -> {path}")


# ------------------------------------------------------------------------------------------------ options

# options of some commands only (None in probe()'s signature: the command's default applies)
_ONLY = {"format": ("imagenet",), "imagenet_r_root": ("imagenet",), "imagenet_v2_root": ("imagenet",),
         "wnids_file": ("imagenet",), "no_r_mask": ("imagenet",), "inat_split_mode": ("transfer",),
         "loss_size": ("ade20k", "nyud"), "slide": ("ade20k",), "eval_size": ("ade20k",), "depth_mode": ("nyud",),
         "depth_bins": ("nyud",), "depth_cls": ("nyud",), "eigen_crop": ("nyud",), "depth_aggregate": ("nyud",)}
_DATA_DEFAULTS = {"format": "folder", "no_r_mask": False, "inat_split_mode": "paper", "depth_mode": "bins",
                  "depth_bins": 256, "depth_cls": True, "eigen_crop": False, "depth_aggregate": "pixel"}
_CHOICES: dict[str, tuple[str, ...]] = {
    "protocol": ("cached", "online"), "device": ("auto", "cpu", "cuda"), "cache_dtype": ("float16", "float32"),
    "format": CLS_FORMATS, "depth_mode": ("bins", "regression"), "depth_aggregate": ("pixel", "image"),
    "inat_split_mode": ("paper", "official")}


def _bad(message: str) -> ProbeError:
    return ProbeError(message, 2)


def _number(name: str, value: Any, kind: type) -> Any:
    """``value`` as an ``int`` / ``float`` (a string such as ``"32"`` too, as on the command line); ``None`` stays."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        what, example = ("an integer", "32") if kind is int else ("a number", "0.1")
        raise _bad(f"{name}={value!r} is not {what}; pass e.g. {name}={example}.") from None


def _lrs(value: Sequence[float] | str | None) -> tuple[float, ...] | None:
    """The learning-rate grid as floats (a sequence, or ``"1e-3,1e-2"`` as ``--lrs`` takes it)."""
    if value is None:
        return None
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise _bad(f"lrs={value!r} is not a list of numbers; pass e.g. lrs=[1e-3, 1e-2].") from None
    if not out:
        raise _bad("lrs is empty; give at least one learning rate.")
    return out


def _check_options(task: str, options: dict[str, Any]) -> None:
    """Refuse what the command line's parser refuses: an option of another command, a value outside its choices."""
    spec = COMMANDS[task]
    for name, commands in _ONLY.items():
        if options.get(name) is not None and task not in commands:
            raise _bad(f"{name}= is an option of the {' / '.join(commands)} probe, not of {task}; drop it.")
    if options["dataset"] is None:
        raise _bad(f"the {task} probe needs a dataset; pass one of {', '.join(spec['datasets'])}.")
    choices = dict(_CHOICES, dataset=spec["datasets"],
                   tokens=("cls", "avg", "cls+avg") if spec["kind"] == "cls" else ("patch",))
    for name, allowed in choices.items():
        value = options.get(name)
        if value is not None and value not in allowed:
            raise _bad(f"{name}={value!r} is not one of {', '.join(allowed)} for the {task} probe; pick one of those.")


# ------------------------------------------------------------------------------------------------ messages


class _Lines(logging.Handler):
    """Print records of ``levels`` to the stderr of the moment (a job's log, a test's capture) as ``prefix + msg``."""

    def __init__(self, prefix: str, levels: tuple[int, int]) -> None:
        super().__init__(level=levels[0])
        self.prefix, self.top = prefix, levels[1]

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno <= self.top:
            print(f"{self.prefix}{record.getMessage()}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Within the block, a probe's warnings reach stderr as ``warning: <sentence>`` (the command lines' wording)."""
    handler = _Lines("warning: ", (logging.WARNING, logging.CRITICAL))
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)


def _messenger(verbose: bool, log: Callable[[str], None] | None) -> Callable[[str], None]:
    """Where progress goes: the logger at INFO, the caller's ``log`` callback, and stderr with ``verbose``."""

    def say(msg: str) -> None:
        LOGGER.info(msg)
        if log is not None:
            log(msg)
        if verbose:
            print(f"[lineval] {msg}", file=sys.stderr, flush=True)

    return say


# ------------------------------------------------------------------------------------------------ the probe


def probe(model_or_run: Any, task: str, dataset: str | None = None, *, protocol: str = "cached",
          lrs: Sequence[float] | str | None = None, data_root: str | os.PathLike[str] | None = None,
          format: str | None = None, input_size: int | None = None, layers: str | int | Sequence[int] = "last",
          tokens: str | None = None, norm: bool = True, epochs: int | None = None, batch_size: int | None = None,
          eval_batch_size: int | None = None, weight_decay: float | None = None, val_fraction: float = 0.1,
          seed: int = 0, num_train: int | None = None, num_test: int | None = None, device: str = "auto",
          workers: int = 2, amp: bool = True, cache_dir: str | os.PathLike[str] | None = None,
          cache_dtype: str = "float16", reuse_cache: bool = True, wandb: bool = False,
          loss_size: int | None = None, slide: int | None = None, eval_size: int | None = None,
          depth_mode: str | None = None, depth_bins: int | None = None, depth_cls: bool | None = None,
          eigen_crop: bool | None = None, depth_aggregate: str | None = None,
          imagenet_r_root: str | os.PathLike[str] | None = None,
          imagenet_v2_root: str | os.PathLike[str] | None = None, wnids_file: str | os.PathLike[str] | None = None,
          no_r_mask: bool | None = None, inat_split_mode: str | None = None,
          out: str | os.PathLike[str] | None = None, verbose: bool = False, progress: bool | None = None,
          log: Callable[[str], None] | None = None) -> ProbeResult:
    """Linear-probe a frozen backbone as ``tools/lineval/<task>.py`` does; write and return its result.

    Trains one linear head per learning rate on the backbone's features, selects the best on a validation split
    carved from the training data, and tests only that head (docs/lineval.md).

    Args:
        model_or_run: a ``tools/train.py`` run directory, a model name (``dinov2_small_imgfocus``),
            ``random:<name>`` (random init seeded with ``seed``), or a :class:`~mdistiller.eval.features.Backbone`
            already built by :func:`~mdistiller.eval.features.load_backbone`.
        task: ``imagenet`` | ``ade20k`` | ``nyud`` | ``transfer`` (the command).
        dataset: the command's ``--dataset`` (default: the command's; ``transfer`` needs one).
        protocol: ``cached`` (features extracted once) or ``online`` (backbone on augmented images every step).
        lrs: the learning-rate grid, floats (default: the task's grid).
        out: the result JSON (default ``RUN_DIR/lineval/<task>[.online].json``, ``output/lineval/<name>/...`` for
            a model name).
        verbose: also print progress to stderr (``[lineval] ...``), as ``--verbose``.
        progress: feature-extraction bars (default: when stderr is a terminal).
        log: called with every progress message (also sent to the ``mdistiller.eval`` logger at INFO).
        **other keywords**: the command's options of the same name (``--num-train`` → ``num_train``, ``--no-norm`` →
            ``norm=False``, ``--no-r-mask`` → ``no_r_mask=True``); an option of another command is refused.

    Raises :class:`ProbeError` (its sentence; ``exit_code`` 2 for a bad option, 1 otherwise), ``ValueError`` for an
    unknown task, and ``KeyboardInterrupt`` carrying :data:`INTERRUPTED` when interrupted while probing (complete
    feature caches are kept).
    """
    if task not in COMMANDS:
        raise ValueError(f"unknown task '{task}'; pick one of {', '.join(COMMANDS)}.")
    spec_cmd = COMMANDS[task]
    kind = spec_cmd["kind"]
    dense = kind != "cls"
    data_opts = {"format": format, "imagenet_r_root": imagenet_r_root, "imagenet_v2_root": imagenet_v2_root,
                 "wnids_file": wnids_file, "no_r_mask": no_r_mask, "inat_split_mode": inat_split_mode,
                 "loss_size": loss_size, "slide": slide, "eval_size": eval_size, "depth_mode": depth_mode,
                 "depth_bins": depth_bins, "depth_cls": depth_cls, "eigen_crop": eigen_crop,
                 "depth_aggregate": depth_aggregate}
    dataset = dataset if dataset is not None else spec_cmd["default"]
    _check_options(task, {**data_opts, "dataset": dataset, "protocol": protocol, "device": device,
                          "cache_dtype": cache_dtype, "tokens": tokens})
    ints = {k: _number(k, v, int) for k, v in (("input_size", input_size), ("epochs", epochs),
                                               ("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                                               ("seed", seed), ("num_train", num_train), ("num_test", num_test),
                                               ("workers", workers))}
    for k in ("loss_size", "slide", "eval_size", "depth_bins"):
        data_opts[k] = _number(k, data_opts[k], int)
    weight_decay, val_fraction = (_number(k, v, float) for k, v in (("weight_decay", weight_decay),
                                                                    ("val_fraction", val_fraction)))
    lr_grid = _lrs(lrs)
    seed = ints["seed"]
    for k in ("imagenet_r_root", "imagenet_v2_root", "wnids_file"):
        data_opts[k] = str(data_opts[k]) if data_opts[k] is not None else None
    options = DataOptions(dataset=dataset, data_root=str(data_root) if data_root is not None else None,
                          num_train=ints["num_train"], num_test=ints["num_test"],
                          **{k: _DATA_DEFAULTS.get(k) if v is None else v for k, v in data_opts.items()})

    from mdistiller.engine.distributed import cleanup, init_distributed, is_main
    from mdistiller.eval.features import Backbone, FeatureSpec, load_backbone, parse_layers
    from mdistiller.eval.runner import ProbeSettings, run_probe
    from mdistiller.fileio import atomic_write

    try:
        spec = FeatureSpec(layers=parse_layers(layers), final_norm=norm,
                           tokens=tokens or ("patch" if dense else "cls"))
    except ValueError as e:
        raise ProbeError(str(e), 2) from None
    if isinstance(model_or_run, Backbone):
        backbone = model_or_run
        target = str(backbone.info.get("run_dir") or backbone.label or backbone.info.get("name", "backbone"))
    else:
        target = str(model_or_run)
        try:
            backbone = load_backbone(target, seed=seed)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            raise ProbeError(str(e).strip("'\"")) from None
    try:
        spec.resolve(backbone.features.depth)
    except ValueError as e:
        raise ProbeError(f"--layers: {e}", 2) from None
    size = ints["input_size"] or backbone.default_input_size
    task_name = result_name(dataset, kind)
    out_dir = default_out_dir(target)
    out_path = Path(out) if out else out_dir / f"{task_name}{'.online' if protocol == 'online' else ''}.json"
    try:
        data, probe_task = make_data(task, options, size)
        if kind == "depth" and not backbone.features.has_cls:
            probe_task.use_cls = False
        settings = ProbeSettings(
            protocol=protocol, epochs=ints["epochs"] or (30 if protocol == "cached" else 10),
            batch_size=ints["batch_size"] or (16 if dense else 256),
            eval_batch_size=ints["eval_batch_size"] or (16 if dense else 256), lrs=lr_grid,
            weight_decay=weight_decay, val_fraction=val_fraction, seed=seed, num_workers=ints["workers"],
            cache_dir=str(Path(cache_dir) if cache_dir else out_dir / "cache"), cache_dtype=cache_dtype,
            reuse_cache=reuse_cache, amp=amp, verbose=verbose, progress=progress,
            slide=(size, options.slide) if options.slide else None)
        if settings.slide is not None and backbone.features.patch_size and size % backbone.features.patch_size:
            raise ValueError(f"--input-size {size} is the sliding window and must be a multiple of the patch "
                             f"size {backbone.features.patch_size}.")
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        raise ProbeError(str(e).strip("'\"")) from None
    env = init_distributed(device)
    main_rank = is_main()
    try:
        raw = run_probe(backbone, spec, probe_task, data, settings, device=env.device,
                        log=_messenger(verbose, log) if main_rank else None)
    except (FloatingPointError, ValueError) as e:
        raise ProbeError(str(e)) from None
    except OSError as e:  # an unreadable image (also inside a loader worker), a full disk: one sentence
        from mdistiller.dataset.bad_images import bad_image_sentence

        raise ProbeError(bad_image_sentence(e)) from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(INTERRUPTED) from None
    finally:
        cleanup()
    # the JSON's content exactly: what json.dumps writes of the runner's result, read back
    content = json.loads(json.dumps({"task": task_name, "command": f"tools/lineval/{task}.py", "argv": sys.argv[1:],
                                     **raw}, default=_json_default))
    result = ProbeResult.from_dict(content)
    if main_rank:
        atomic_write(out_path, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2)))
        result.path = out_path
        if wandb:
            log_result_to_wandb(target, content, online=protocol == "online")
    return result


def probe_job(target: str, task: str, options: Mapping[str, Any]) -> int:
    """Process-pool job (:class:`mdistiller.jobs.Job` target ``mdistiller.eval.probing:probe_job``): run
    ``probe(target, task, **options)`` and report as the command does: the summary line on stdout, ``error:
    <sentence>`` (or the interruption sentence) on stderr; returns the command's exit status (0, 1, 2 or 130)."""
    with warnings_to_stderr():
        try:
            result = probe(target, task, **options)
        except ProbeError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return e.exit_code
        except KeyboardInterrupt as e:
            if not e.args:  # not from the probe loops (e.g. while torch imports): the caller's handler decides
                raise
            print(e.args[0], file=sys.stderr, flush=True)
            return 130
    if result.path is not None:
        print(result.summary(), flush=True)
    return 0


def log_result_to_wandb(run_dir: str, result: Mapping[str, Any], online: bool = False) -> bool:
    """Log a probe result beside the wandb run of the training run ``run_dir`` (a run of its own in its group,
    ``job_type`` eval): the summary entries ``lineval/<task>/<metric>`` and ``lineval/<task>[.online]``, which
    ``tools/lineval/table.py --wandb`` reads. Warns (logger ``mdistiller.eval``) and returns ``False`` when
    ``run_dir`` is not a run directory."""
    from mdistiller.engine.dashboards import log_to_run

    if not Path(run_dir).is_dir():
        LOGGER.warning(f"--wandb needs a training run directory, not '{run_dir}'; the result is in the JSON only.")
        return False
    task = result["task"] + (".online" if online else "")
    scalars = {f"lineval/{task}/{k}": v for k, v in result["metrics"].items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    for name, metrics in (result.get("extra_tests") or {}).items():
        scalars |= {f"lineval/{task}/{name}/{k}": v for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
    cell = json.loads(json.dumps({k: result.get(k) for k in ("metrics", "extra_tests", "chosen_lr", "task_kind")}
                                 | {"protocol": result["protocol"]["name"],
                                    "student_fingerprint": result["model"].get("student_fingerprint")},
                                 default=_json_default))
    return log_to_run(run_dir, scalars, summary={f"lineval/{task}": cell}, job_type="eval", label=f"lineval/{task}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
