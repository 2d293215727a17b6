"""The training loop: one engine for every distiller, 1 CPU process or N GPUs under torchrun."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdistiller.config import CN, flatten
from mdistiller.distillers import Distiller, build_distiller
from mdistiller.hooks import get_hook

from . import checkpoint as ckpt
from . import identity
from .console import ImageRate, format_count, key_value_block, layer_tables, progress_bar_allowed, wrap_items
from .data import DeviceDecodedBatches, build_train_loader
from .distributed import DistEnv, all_gather_object, barrier, broadcast_object, reduce_mean_dict
from .fingerprint import weights_fingerprint
from .load import checkpoint_meta
from .logging import MetricsWriter, write_run_info
from .metrics_file import truncate_metrics
from .optim import IterationScheduler, build_optimizer, clip_grad
from .preflight import check_batch_fits
from .rundir import RunDirError, run_history
from .sampler import ResumableDistributedSampler
from .stopping import SignalStop, agree_step_flags

__all__ = ["Trainer", "NonFiniteLossError", "run_dir_for"]


class NonFiniteLossError(RuntimeError):
    """A loss term, an update or the state to checkpoint became NaN/inf; the last finite checkpoint is kept."""


def run_dir_for(cfg: CN) -> Path:
    """``EXPERIMENT.OUTPUT_DIR / PROJECT / (NAME or TAG)``."""
    e = cfg.EXPERIMENT
    return Path(e.OUTPUT_DIR) / e.PROJECT / (e.NAME or e.TAG)


@dataclass
class _FitRun:
    """What one call of :meth:`Trainer.fit` carries from step to step."""

    log: MetricsWriter
    bar: Any = None  # the progress bar (main rank, a terminal), else None
    last: dict[str, Any] = field(default_factory=dict)  # the last logged metrics: what fit returns
    window: list[dict[str, float]] = field(default_factory=list)  # the steps since the last log record
    epoch_steps: list[dict[str, float]] = field(default_factory=list)  # the steps of this (partial) epoch
    rate: ImageRate = field(default_factory=ImageRate)  # the one img/s: images of all ranks per second of the loop
    t0: float = 0.0  # perf_counter at the start of fit (the end block's wall time)
    first_step: int = 0  # the step fit started from


class Trainer:
    """Distils ``cfg`` into ``run_dir``: DDP over the trainable module only, AMP, clipping, per-iteration
    schedule, atomic resumable checkpoints (never the teacher), ``metrics.jsonl``, feature agreement on a held-out
    batch, and a timm-loadable ``student.safetensors`` at the end.
    """

    def __init__(self, cfg: CN, env: DistEnv, run_dir: str | Path | None = None) -> None:
        from mdistiller.dataset import build_dataset, size_kwargs
        from mdistiller.dataset.formats import format_kwargs

        self.cfg, self.env = cfg, env
        self.run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pth"
        s, data = cfg.SOLVER, cfg.DATASET
        if s.BATCH_SIZE % env.world_size:
            raise ValueError(f"SOLVER.BATCH_SIZE {s.BATCH_SIZE} (global) is not divisible by the world size "
                             f"{env.world_size}; pick a multiple of {env.world_size}.")
        self.batch = s.BATCH_SIZE // env.world_size
        device_decode = str(data.DECODE).lower() == "device"
        if device_decode:
            from mdistiller.dataset.device_decode import check_device_decode

            check_device_decode(data.TYPE)
        ckpt.seed_everything(cfg.EXPERIMENT.SEED)  # same init on every rank
        self.distiller: Distiller = build_distiller(cfg, device=env.device)
        torch.manual_seed(cfg.EXPERIMENT.SEED + env.rank)  # per-rank stream for in-model randomness (ViTKD masks)
        train_set = build_dataset(data.TYPE, "train", root=data.ROOT, input_size=data.INPUT_SIZE,
                                  train=bool(data.AUGMENT), **size_kwargs(data.TYPE, data.TRAIN_SIZE),
                                  **format_kwargs(data, "train"))
        if not device_decode:
            from mdistiller.dataset.bad_images import guard_images

            train_set = guard_images(train_set, skip=bool(data.SKIP_BAD_IMAGES))
        if not isinstance(train_set, torch.utils.data.IterableDataset):  # a stream sizes its epoch when configured
            check_batch_fits(len(train_set), cfg)
        self.loader, self.sampler = self._train_loader(train_set, device_decode)
        self.heldout = self._heldout_batch(build_dataset) if env.is_main else None
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = s.MAX_STEPS or s.EPOCHS * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizer = build_optimizer(
            self.distiller.optimizer_groups(), type=s.TYPE, lr=s.LR, weight_decay=s.WEIGHT_DECAY,
            betas=tuple(s.BETAS), eps=s.EPS, momentum=s.MOMENTUM, fused=True if s.FUSED else None)
        self.scheduler = IterationScheduler(
            self.optimizer, s.LR, self.total_steps,
            warmup_steps=min(self.total_steps, round(s.WARMUP_EPOCHS * self.steps_per_epoch)),
            schedule=s.SCHEDULE.lower(), final_lr=s.FINAL_LR, gamma=s.GAMMA,
            milestones=[round(m * self.steps_per_epoch) for m in s.MILESTONES])
        amp = s.AMP.lower()
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=amp == "fp16")
        self.model: nn.Module = self.distiller
        if s.COMPILE:
            self.model = torch.compile(self.model)  # after freezing: compile does not guard on requires_grad
        if env.distributed:
            ids = [env.local_rank] if env.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.stop = SignalStop(say=lambda text: self._say(text, console=False))  # the signal this rank received
        self.stop_agreed = 0  # the signal every rank agreed on in the last step (0: none); the loop stops on it
        self.saved_step: int | None = None  # step of the checkpoint last written or resumed from
        self.teacher_file = self._teacher_file_identity()
        self.bad_images = getattr(train_set, "skipped", None)  # DATASET.SKIP_BAD_IMAGES counter (shared by workers)
        self.grad_terms: dict[str, float] = {}  # per-term gradient norms of the last step that measured them
        self.changes: list[dict[str, Any]] = []  # accepted config changes of a resumed run, with their steps
        self.student_fingerprint: str | None = None  # of the exported student (engine/fingerprint.py)

    # ---------------------------------------------------------------------------------------------- pieces
    def _train_loader(self, train_set: Any, device_decode: bool) -> tuple[Any, ResumableDistributedSampler]:
        """The training loader. With ``DATASET.DECODE device`` workers read file bytes and draw each sample's
        crop/flip under :class:`~mdistiller.engine.data.SeededSamples` (so resume stays exact), and decoding and
        the crops run on ``env.device``; those bytes are not pinned (nvjpeg copies them itself; pinning each
        string costs more)."""
        data, env = self.cfg.DATASET, self.env
        pin, collate = bool(data.PIN_MEMORY) and env.device.type == "cuda", None
        if device_decode:
            from mdistiller.dataset.device_decode import EncodedImages, collate_encoded

            train_set = EncodedImages.from_dataset(train_set, augment=bool(data.AUGMENT))
            pin, collate = False, collate_encoded
        loader, sampler = build_train_loader(
            train_set, world_size=env.world_size, rank=env.rank, batch_size=self.batch, seed=self.cfg.EXPERIMENT.SEED,
            num_workers=data.NUM_WORKERS, pin_memory=pin, persistent_workers=bool(data.PERSISTENT_WORKERS),
            prefetch_factor=data.PREFETCH_FACTOR, collate_fn=collate, worker_start=str(data.WORKER_START).lower())
        if not device_decode:
            return loader, sampler
        from mdistiller.dataset.device_decode import DeviceDecodeTransform

        transform = DeviceDecodeTransform(int(data.INPUT_SIZE), train=bool(data.AUGMENT), device=env.device)
        return DeviceDecodedBatches(loader, transform), sampler

    def _heldout_batch(self, build_dataset) -> torch.Tensor:
        """The held-out batch of the agreement check: the first ``DATASET.VAL_SIZE`` (default: one batch, at most
        16) images of the val split, on the device; empty when there is no val split (the check is skipped)."""
        from mdistiller.dataset import size_kwargs
        from mdistiller.dataset.formats import format_kwargs

        data = self.cfg.DATASET
        n = data.VAL_SIZE or min(self.batch, 16)
        kwargs = size_kwargs(data.TYPE, n) | format_kwargs(data, "val")
        try:
            ds = build_dataset(data.TYPE, "val", root=data.ROOT, input_size=data.INPUT_SIZE, train=False, **kwargs)
        except (FileNotFoundError, ValueError):
            return torch.empty(0)  # no held-out split: agreement is skipped
        from mdistiller.dataset.bad_images import GuardedImages

        ds = GuardedImages(ds, skip=bool(data.SKIP_BAD_IMAGES), what="held-out (val) image")  # as for training
        return torch.stack([ds[i][0] for i in range(min(n, len(ds)))]).to(self.env.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _teacher_file_identity(self) -> dict[str, Any] | None:
        """Size and sampled hash of ``DISTILLER.TEACHER_WEIGHTS`` when it is a file (recorded in checkpoints)."""
        from mdistiller.distillers import weights_arg
        from mdistiller.models.weights import file_identity

        w = weights_arg(self.cfg.DISTILLER.TEACHER_WEIGHTS)
        if self.cfg.DISTILLER.TYPE.lower() == "supervised" or isinstance(w, bool) or not Path(w).is_file():
            return None
        return {"path": str(w), **file_identity(w)}

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, optimizer, schedule, scaler, step, every rank's RNG, config,
        teacher file and accepted changes (collective: every rank calls it)."""
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        return {"meta": checkpoint_meta(self.cfg, self.distiller), "model": self.distiller.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": epoch, "step_in_epoch": in_epoch,
                "rng": all_gather_object(ckpt.rng_state()), "config": self.cfg.dump(),
                "teacher_file": self.teacher_file, "changes": self.changes}

    def save(self) -> None:
        """Write ``last.pth`` (the one it replaces becomes ``prev.pth``), only from a finite state: every rank holds
        the same parameters and optimizer state, so every rank refuses together."""
        state = self.state()  # collective (RNG gather): every rank calls it
        bad = ckpt.nonfinite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
        if bad:
            raise NonFiniteLossError(
                f"refusing to checkpoint step {self.step}: {len(bad)} non-finite tensor(s) ({', '.join(bad[:3])}); "
                f"{self._advice(self.step)}.")
        if self.env.is_main:
            ckpt.save_checkpoint(self.ckpt_path, state, keep_previous=True)
        self.saved_step = self.step
        barrier()

    def _advice(self, failing_step: int) -> str:
        """What to do after a non-finite loss/update at ``failing_step``. When that step started right from the last
        checkpoint, that checkpoint is finite but diverges at once, so the advice names the one before it."""
        last, prev = self.ckpt_path, ckpt.previous_path(self.ckpt_path)
        fix = "lower SOLVER.LR or enable SOLVER.GRAD_CLIP"
        if not last.exists():
            return f"no checkpoint was written yet: {fix} and start again"
        fix += (f" (with --run-dir {self.run_dir} and the changed keys in EXPERIMENT.RESUME_ALLOW_CHANGES, e.g. "
                "\"['SOLVER.LR']\", to continue this run)")
        if self.saved_step == failing_step - 1 and prev.exists():
            return (f"the last checkpoint ({last}, step {self.saved_step}) is finite but this step diverged from it, "
                    f"so {fix} and resume from the checkpoint before it with --resume {prev}")
        return f"the last finite checkpoint ({last}) is kept: {fix}, then rerun to resume from it"

    def check_resumable(self, state: dict[str, Any], path: Path) -> list[dict[str, Any]]:
        """Refuse, in one sentence (:class:`~mdistiller.engine.checkpoint.CheckpointMismatchError`, exit 2), a
        checkpoint this run may not continue: other trainable parameters, a step beyond this config's total, a
        config that differs in a key that changes what is trained (:mod:`mdistiller.engine.identity`; the config the
        checkpoint stores, else the run's ``config.yaml``), or another teacher file. Returns the accepted changes
        as ``run_info.json`` records (key, old, new, step).

        A change of the learning-rate schedule's keys is accepted without ``EXPERIMENT.RESUME_ALLOW_CHANGES`` when
        every step already trained keeps its learning rate (e.g. a longer ``SOLVER.MAX_STEPS`` under a constant or
        multistep schedule): the run then equals one configured that way from the start."""
        ckpt.check_compatible(state, checkpoint_meta(self.cfg, self.distiller), path=path)
        step, where = int(state.get("step", 0)), f"checkpoint {path}"
        if step > self.total_steps:
            s = self.cfg.SOLVER
            length = f"SOLVER.MAX_STEPS {s.MAX_STEPS}" if s.MAX_STEPS else f"SOLVER.EPOCHS {s.EPOCHS}"
            raise ckpt.CheckpointMismatchError(
                f"{where} is at step {step}, beyond the {self.total_steps} steps this config trains ({length}); a "
                f"trained run cannot be cut back, so resume with SOLVER.MAX_STEPS {step} or more, or start a new run "
                f"(another EXPERIMENT.NAME or --run-dir) to train {self.total_steps} steps.")
        accepted: list[identity.Change] = []
        dump, recorded = state.get("config"), self.run_dir / "config.yaml"
        if not isinstance(dump, str) and recorded.is_file():  # a checkpoint without its config: the run's record
            dump = recorded.read_text(encoding="utf-8")
        if isinstance(dump, str):
            changes = identity.config_changes(identity.flat_config(dump), identity.flat_config(self.cfg))
            schedule, saved = identity.schedule_changes(changes), state.get("scheduler")
            if schedule and isinstance(saved, Mapping) and self.scheduler.same_rates(saved, step):
                accepted, changes = schedule, [c for c in changes if c not in schedule]
            ok, refused = identity.permitted(changes, self.cfg.EXPERIMENT.RESUME_ALLOW_CHANGES)
            if refused:
                raise ckpt.CheckpointMismatchError(identity.refusal(where, step, refused))
            accepted += ok
        old_t, new_t = state.get("teacher_file"), self.teacher_file
        ident = [None if t is None else (t["size"], t["hash"]) for t in (old_t, new_t)]
        same = ident[0] == ident[1]
        if "teacher_file" in state and not same:
            before = f"'{old_t['path']}' ({old_t['size']} bytes)" if old_t else "no teacher file"
            now = f"'{new_t['path']}' ({new_t['size']} bytes)" if new_t else "no teacher file"
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {path} was trained against teacher weights {before} but DISTILLER.TEACHER_WEIGHTS now "
                f"gives {now}, a different file; resume with the original teacher file or start a new run dir.")
        return [c.record(step) for c in accepted]

    def resume(self, path: str | Path) -> None:
        """Continue exactly where ``path`` stopped: weights, optimizer, schedule, scaler, RNG and sample stream.

        The optimizer's hyper-parameters (weight decay, betas, ...) are this config's, not the checkpoint's, so a
        change :meth:`check_resumable` accepted takes effect; it is recorded in ``self.changes`` (checkpoints and
        ``run_info.json``) with the step it took effect from."""
        path = Path(path)
        state = ckpt.load_checkpoint(path, map_location="cpu")
        accepted = self.check_resumable(state, path)
        own = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.distiller.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, own):
            group.update(settings)
        self.scheduler.load_state_dict(state["scheduler"], quiet=True)
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank])
        history = [c for c in state.get("changes") or [] if isinstance(c, dict) and int(c.get("step", 0)) <= self.step]
        if path.resolve().parent != self.ckpt_path.parent.resolve():
            history.append({"step": self.step, "resumed_from": str(path.resolve())})
        self.changes = history + accepted
        if accepted and self.env.is_main:
            shown = ", ".join(f"{c['key']} {identity.show(c['old'])} → {identity.show(c['new'])}" for c in accepted)
            print(f"[mdistiller] note: continuing from step {self.step} with {shown} (recorded in run_info.json).",
                  file=sys.stderr, flush=True)

    def _refuse_restart(self) -> None:
        """A fresh start (no checkpoint to resume) must not replace a run's history in ``run_dir``."""
        found = broadcast_object(run_history(self.run_dir) if self.env.is_main else None)
        if found:
            raise RunDirError(
                f"run directory {self.run_dir} already holds a run ({', '.join(found)}); a fresh start would replace "
                "its history, so resume it, use another run directory, or clear it with tools/train.py --resume none "
                "--overwrite")

    # ---------------------------------------------------------------------------------------------- loop
    def train_step(self, images: torch.Tensor, targets: Any = None) -> dict[str, float]:
        """One optimizer step (autocast, the step's agreement on non-finite losses and signals, backward, clipping,
        update and schedule); returns the step's loss terms and ``grad_norm``."""
        self.model.train()
        every = self.cfg.LOG.GRAD_TERMS_EVERY_STEPS
        measure_terms = bool(self.env.is_main and every and self.step % every == 0)
        self.distiller.keep_terms = measure_terms
        with self._autocast():
            out = self.model(images, targets) if self.distiller.needs_targets else self.model(images)
        bad = {k: v for k, v in out.items() if not torch.isfinite(v.detach()).all()}
        # the step's one collective of its own: every rank learns whether any rank saw a non-finite loss or a signal
        nonfinite, self.stop_agreed = agree_step_flags(bool(bad), self.stop.signum, self.env.device,
                                                       self.env.distributed)
        if nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1} (term(s): {', '.join(bad) or 'on another rank'}); "
                f"{self._advice(self.step + 1)}.")
        self.grad_terms = self.distiller.term_grad_norms() if measure_terms else {}
        self.scaler.scale(out["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad([p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.SOLVER.GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._check_update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        metrics = {k: float(v.detach()) for k, v in out.items()}
        metrics["grad_norm"] = float(grad_norm)  # before clipping; measured even when SOLVER.GRAD_CLIP is 0
        return metrics

    def _check_update(self) -> None:
        """Stop when the update just applied left a parameter non-finite (max-abs norms: no overflow, one fused
        reduction; the optimizer state is checked before every save). The checkpoint on disk predates the update."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        tensors = [p.detach() for p in params]
        if not tensors or bool(torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all()):
            return
        names = {id(p): n for n, p in self.distiller.named_parameters()}
        bad = [names.get(id(p), "?") for p in params if not bool(torch.isfinite(p.detach()).all())]
        raise NonFiniteLossError(
            f"non-finite update at step {self.step + 1} (parameter(s) {', '.join(bad[:3])} became NaN/inf although "
            f"the loss was finite); {self._advice(self.step + 1)}.")

    def agreement(self) -> dict[str, float]:
        """The teacher-student agreement on the held-out batch (``agree/...``; empty without one)."""
        if self.heldout is None or self.heldout.numel() == 0:
            return {}
        self.distiller.eval()
        with self._autocast():
            res = self.distiller.agreement(self.heldout)
        self.distiller.train()
        return {f"agree/{k}": v for k, v in res.items()}

    def _say(self, text: str, bar: Any = None, console: bool = True) -> None:
        """One or more plain lines to ``RUN_DIR/train.log`` (always) and to the console (``console``, main rank;
        through the bar when one is shown)."""
        if not self.env.is_main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.writelines(f"{stamp} {line}\n" for line in text.splitlines())
        if console:
            if bar is not None:
                bar.write(text)
            else:
                print(text, flush=True)

    def _log_figures(self, log: MetricsWriter) -> None:
        """Feature-map figures of the distiller in memory (``tools/analyze.py figures``, titled with this step) into
        wandb and TensorBoard, in eval mode and with the training RNG streams left untouched; a failure only warns
        (figures must never stop a run)."""
        if not (self.env.is_main and log.takes_images and self.cfg.LOG.WANDB_FIGURES):
            return
        draw = get_hook("run_figures")  # the analysis package's, registered in mdistiller/__init__.py
        if draw is None:
            return
        was_training = self.distiller.training
        rng_devices = [self.env.device] if self.env.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng_devices):
                self.distiller.eval()
                paths = draw(self.run_dir, self.cfg, self.distiller, step=self.step)
            log.images({f"figures/{Path(p).stem}": p for p in paths}, step=self.step)
        except Exception as e:  # noqa: BLE001
            import warnings

            warnings.warn(f"feature-map figures for the dashboards failed at step {self.step} ({e}); training goes on.",
                          stacklevel=2)
        finally:
            self.distiller.train(was_training)

    def _memory(self) -> dict[str, float]:
        """``mem/gpu_max_gb`` (peak allocated on the device) or ``mem/rss_max_gb`` (peak resident set, CPU)."""
        if self.env.device.type == "cuda":
            return {"mem/gpu_max_gb": torch.cuda.max_memory_allocated(self.env.device) / 2**30}
        try:
            import resource
        except ImportError:
            return {}
        return {"mem/rss_max_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def _start_block(self, bar: bool) -> str:
        """The start-of-run block (as timm's ``train.py`` prints it): models and parameter counts, layers, data,
        batch, steps, optimizer, precision, devices and the run directory."""
        cfg, env, d, s = self.cfg, self.env, self.distiller, self.cfg.SOLVER
        trainable: dict[str, int] = {}
        for name, p in d.trainable_parameters():
            trainable[name.split(".")[0]] = trainable.get(name.split(".")[0], 0) + p.numel()
        teacher = sum(p.numel() for p in d.teacher.parameters()) if d.teacher is not None else 0
        frozen_student = sum(p.numel() for p in d.student.parameters() if not p.requires_grad)
        student = sum(p.numel() for p in d.student.parameters())
        n_train = sum(trainable.values())
        amp = s.AMP.lower()
        precision = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}.get(amp, "fp32 (no autocast)")
        device = env.device.type
        if device == "cuda":
            device += f" ({torch.cuda.get_device_name(env.device)})"
        ckpts = f", checkpoint every {cfg.LOG.CKPT_EVERY_STEPS}" if cfg.LOG.CKPT_EVERY_STEPS else ""
        rows: list[tuple[str, str | list[str]]] = [
            ("run directory", f"{self.run_dir} ({f'resuming at step {self.step}' if self.step else 'new run'})"),
            ("teacher", f"{cfg.DISTILLER.TEACHER}: {format_count(teacher)} parameters, frozen"
                        if d.teacher is not None else "none"),
            ("student", f"{cfg.DISTILLER.STUDENT}: {format_count(student)} parameters"
                        + (f" ({format_count(frozen_student)} unused by the loss, frozen)" if frozen_student else "")),
            ("trainable", f"{format_count(n_train)} = " + " + ".join(f"{k} {format_count(v)}"
                                                                    for k, v in trainable.items())),
            ("frozen", f"{format_count(teacher + frozen_student)}"),
            ("layers", f"{cfg.DISTILLER.TYPE}: " + (", ".join(f"teacher {t} → student {u}" for t, u in d.plan.pairs())
                                                    if d.teacher is not None else
                                                    f"student block {d.plan.student[-1]}, no teacher")),
            ("data", f"{cfg.DATASET.TYPE}, {self.sampler.dataset_len} images at {cfg.DATASET.INPUT_SIZE} px, "
                     f"{cfg.DATASET.NUM_WORKERS} loader workers per rank"),
            ("batch", f"{self.batch} per rank × {env.world_size} = {self.batch * env.world_size} global"),
            ("steps", f"{self.total_steps} ({self.steps_per_epoch} per epoch, {self.epochs} epoch(s)); log every "
                      f"{cfg.LOG.FREQ}{ckpts}"),
            ("optimizer", f"{s.TYPE}, lr {s.LR:g} ({s.SCHEDULE}), weight decay {s.WEIGHT_DECAY:g}, gradient clip "
                          f"{s.GRAD_CLIP:g}"),
            ("precision", precision + (", torch.compile" if s.COMPILE else "")),
            ("devices", f"{env.world_size} × {device} (world size {env.world_size})"),
            ("console", "progress bar" if bar else f"a plain line every {cfg.LOG.FREQ} steps"),
        ]
        return key_value_block(f"{cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}", rows)

    def _summary_block(self, last: dict[str, Any], wall_s: float, steps_run: int,
                       img_s: float) -> tuple[str, dict[str, Any]]:
        """The end-of-run block (final losses, agreement tables, wall time, throughput, memory, files) and its
        values; ``img_s`` is the session's images per second (:class:`~mdistiller.engine.console.ImageRate`)."""
        cfg = self.cfg
        values: dict[str, Any] = {"final_step": self.step, "wall_s": round(wall_s, 2), "img_per_s": img_s}
        values |= {f"final/{k}": v for k, v in last.items() if k.startswith("loss") or k.startswith("agree/")}
        values |= self._memory()
        if self.student_fingerprint:
            values["student_fingerprint"] = self.student_fingerprint
        losses = [f"{k.removeprefix('final/')} {v:.4g}" for k, v in values.items() if k.startswith("final/loss")]
        agree = {k.removeprefix("final/agree/"): v for k, v in values.items() if k.startswith("final/agree/")}
        mem = [f"{k.removeprefix('mem/')} {v:.2f}" for k, v in values.items() if k.startswith("mem/")]
        rows: list[tuple[str, str | list[str]]] = [
            ("final losses", wrap_items(losses, width=90) or ["-"]),
            ("agreement", (layer_tables(agree, {"": "held-out batch", "refine": "refinement (held-out batch)"},
                                         indent="") if agree else ["-"])),
            ("wall time", f"{wall_s:.1f} s for {steps_run} steps this session (start-up and export included)"),
            ("throughput", f"{img_s:.1f} img/s (all ranks, over the training loop: the log lines' img/s weighted by "
                            "their duration)"),
            ("memory", " ".join(mem) or "-"),
            ("student", str(self.run_dir / "student.safetensors")
                        + (f" (fingerprint {self.student_fingerprint})" if self.student_fingerprint else "")),
            ("curves", f"{self.run_dir / 'metrics.jsonl'}, {self.run_dir / 'train.log'}"),
        ]
        title = (f"{cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}: done, step "
                 f"{self.step}/{self.total_steps}")
        return key_value_block(title, rows), values

    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train to ``total_steps``; returns the last logged metrics. A SIGINT/SIGTERM writes a checkpoint and
        returns early with ``"interrupted": signal``; under a process group a signal to any one rank stops every
        rank after the same step, which each step agrees on (:mod:`~mdistiller.engine.stopping`), and a second
        signal ends the process at once.

        The loop, step by step: :meth:`_begin` (resume or refuse a restart, the starting checkpoint, ``run_info.json``,
        the writer, the signal handlers, the start block and the bar), then for every batch :meth:`_train_one_step`,
        :meth:`_log_if_due`, :meth:`_agreement_if_due`, :meth:`_end_of_epoch`, :meth:`_checkpoint_if_due`,
        :meth:`_draw_figures_if_due`, the bar, and :meth:`_agree_to_stop` (:meth:`_stop` when a signal came); at the
        end :meth:`_finish` (export and the end block), and always :meth:`_close`."""
        run = self._begin(resume)
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start=start * self.batch)
                for images, targets in self.loader:
                    self._train_one_step(run, images, targets, epoch)
                    self._log_if_due(run, epoch)
                    self._agreement_if_due(run, epoch)
                    self._end_of_epoch(run, epoch)
                    self._checkpoint_if_due()
                    self._draw_figures_if_due(run)
                    if run.bar is not None:
                        run.bar.update(1)
                    stop = self._agree_to_stop()
                    if stop:
                        return self._stop(run, stop)
                    if self.step >= self.total_steps:
                        break
            return self._finish(run)
        finally:
            self._close(run)

    # ---------------------------------------------------------------------------------------------- fit's steps
    def _epoch_done(self) -> bool:
        """The step just trained ends an epoch."""
        return self.step % self.steps_per_epoch == 0

    def _at_end(self) -> bool:
        """The step just trained is the run's last."""
        return self.step == self.total_steps

    def _begin(self, resume: str | Path | None) -> _FitRun:
        """Everything before the first step: resume ``resume`` (or refuse to restart over a run's history), drop
        stale temporaries and replayed metric records, write the starting checkpoint of a fresh run and
        ``run_info.json``, open the metrics writer, install the signal handlers, print the start block and open
        the progress bar (a terminal only)."""
        cfg, env = self.cfg, self.env
        if resume:
            self.resume(resume)
        else:
            self._refuse_restart()
        if env.is_main:
            ckpt.clean_stale_temps(self.ckpt_path.parent)
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)  # each step once: drop replayed records
        if not resume and self.step == 0:
            self.save()  # the starting point: "the checkpoint before" exists even when step 1 already diverges
        hparams: dict[str, Any] = {}  # the dashboards' flat config and provenance (main rank)
        if env.is_main:
            n_params = sum(p.numel() for _, p in self.distiller.trainable_parameters())
            info = write_run_info(self.run_dir, cfg.dump(), {"distiller": cfg.DISTILLER.TYPE,
                                                            "plan": repr(self.distiller.plan),
                                                            "trainable_params": n_params,
                                                            "changes": self.changes})
            hparams = flatten(cfg) | {k: info[k] for k in ("git", "host", "world_size")}
        log = MetricsWriter(self.run_dir, env.is_main, tensorboard=cfg.LOG.TENSORBOARD, wandb=cfg.LOG.WANDB,
                            wandb_project=cfg.EXPERIMENT.PROJECT, wandb_name=cfg.EXPERIMENT.NAME or self.run_dir.name,
                            wandb_tags=[t for t in cfg.EXPERIMENT.TAG.split(",") if t], wandb_config=hparams)
        self.stop.install()  # SIGINT/SIGTERM: a checkpoint at the next agreed step; restored on return
        t0, first_step = time.perf_counter(), self.step
        show_bar = env.is_main and progress_bar_allowed(cfg.LOG.PROGRESS)  # a terminal only: no \r in log files
        if env.is_main:
            self._say(self._start_block(show_bar))
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.DISTILLER.TYPE}", dynamic_ncols=True,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
        return _FitRun(log, bar, t0=t0, first_step=first_step)  # its ImageRate's clock starts now

    def _train_one_step(self, run: _FitRun, images: Any, targets: Any, epoch: int) -> None:
        """One optimizer step on a batch (:meth:`train_step`), its metrics kept for the log window and the epoch,
        the per-term gradient norms logged when measured, and the batch counted for img/s."""
        env = self.env
        images = images.to(env.device, non_blocking=True)
        if self.distiller.needs_targets:
            targets = _to_device(targets, env.device)
        run.window.append(self.train_step(images, targets))
        run.epoch_steps.append(run.window[-1])
        if self.grad_terms:
            run.log.log(self.grad_terms, step=self.step, epoch=epoch)
            run.last.update(self.grad_terms)
        run.rate.add(images.shape[0] * env.world_size)

    def _log_if_due(self, run: _FitRun, epoch: int) -> None:
        """Every ``LOG.FREQ`` steps, at an epoch's end and at the last step: one record of the window's means
        (:meth:`_log`), which becomes the returned metrics (the last agreement and gradient terms kept)."""
        if self.step % self.cfg.LOG.FREQ == 0 or self._epoch_done() or self._at_end():
            run.last = self._log(run.log, run.window, epoch, run.rate.window(), run.bar) | {
                k: v for k, v in run.last.items() if k.startswith(("agree/", "grad/"))}
            run.window = []

    def _agreement_if_due(self, run: _FitRun, epoch: int) -> None:
        """Every ``LOG.AGREEMENT_EVERY_STEPS`` steps (default: once an epoch) and at the last step: the
        teacher-student agreement on the held-out batch (:meth:`agreement`)."""
        every = self.cfg.LOG.AGREEMENT_EVERY_STEPS or self.steps_per_epoch
        if self.step % every == 0 or self._at_end():
            agr = self.agreement()
            if agr:
                run.log.log(agr, step=self.step, epoch=epoch)
                run.last.update(agr)

    def _end_of_epoch(self, run: _FitRun, epoch: int) -> None:
        """At an epoch's end and at the last step: one summary record per (partial) epoch (:meth:`_epoch_summary`)."""
        if self._epoch_done() or self._at_end():
            run.log.log(self._epoch_summary(run.epoch_steps, epoch, run.rate.epoch()), step=self.step)
            run.epoch_steps = []

    def _checkpoint_if_due(self) -> None:
        """Every ``LOG.CKPT_EVERY_STEPS`` steps, at an epoch's end and at the last step: :meth:`save`."""
        every = self.cfg.LOG.CKPT_EVERY_STEPS
        if (every and self.step % every == 0) or self._epoch_done() or self._at_end():
            self.save()

    def _draw_figures_if_due(self, run: _FitRun) -> None:
        """Every ``LOG.WANDB_FIGURES_EVERY_STEPS`` steps before the last: the dashboards' figures
        (:meth:`_log_figures`; :meth:`_finish` draws the last ones)."""
        every = self.cfg.LOG.WANDB_FIGURES_EVERY_STEPS
        if every and self.step % every == 0 and self.step < self.total_steps:
            self._log_figures(run.log)

    def _agree_to_stop(self) -> int:
        """The signal the loop stops on after this step (0: none). Under a process group it is the one every rank
        agreed on inside :meth:`train_step` (:func:`~mdistiller.engine.stopping.agree_step_flags`), so every rank
        saves this same step and returns; in one process, the signal received."""
        return self.stop_agreed if self.env.distributed else (self.stop.signum or 0)

    def _stop(self, run: _FitRun, signum: int) -> dict[str, Any]:
        """Stop on signal ``signum``: a checkpoint of this step (unless it was just written), a ``train.log`` line,
        and the last metrics with ``"interrupted": signum``."""
        if self.saved_step != self.step:  # no second checkpoint of a step just saved
            self.save()
        run.last["interrupted"] = signum
        self._say(f"[mdistiller] stopped by signal {signum} at step {self.step}; checkpoint {self.ckpt_path}",
                  console=False)
        return run.last

    def _finish(self, run: _FitRun) -> dict[str, Any]:
        """After the last step: export the student, record skipped bad images, close the bar, draw the last figures,
        print and record the end block; returns the last metrics."""
        self.export()
        skipped = self.bad_images.value if self.bad_images is not None else 0
        if skipped:
            run.log.log({"bad_images": skipped}, step=self.step)
            run.last["bad_images"] = skipped
        if run.bar is not None:
            run.bar.close()
            run.bar = None
        self._log_figures(run.log)
        block, values = self._summary_block(run.last, time.perf_counter() - run.t0, self.step - run.first_step,
                                            run.rate.rate)
        self._say(block)
        run.log.summary(values)
        return run.last

    def _close(self, run: _FitRun) -> None:
        """However :meth:`fit` ends: close the bar and the writer, and restore the caller's signal handlers."""
        if run.bar is not None:
            run.bar.close()
        run.log.close()
        self.stop.restore()

    def _epoch_summary(self, steps: list[dict[str, float]], epoch: int, img_s: float) -> dict[str, Any]:
        """``{"epoch_end": e, "epoch/<term>": mean over the epoch's steps (all ranks), ..., "epoch/img_per_s"}``
        (``img_s``: :meth:`ImageRate.epoch <mdistiller.engine.console.ImageRate.epoch>`)."""
        keys = sorted({k for m in steps for k in m})
        means = reduce_mean_dict({k: sum(m.get(k, 0.0) for m in steps) / max(len(steps), 1) for k in keys},
                                 len(steps))
        return {"epoch_end": epoch, "steps": len(steps), **{f"epoch/{k}": v for k, v in means.items()},
                "epoch/img_per_s": img_s}

    def _log(self, log: MetricsWriter, window: list[dict[str, float]], epoch: int, img_s: float, bar) -> dict:
        """One record of the window's mean metrics (all ranks) to the writer, the bar's postfix and a plain line;
        ``img_s`` is the window's :meth:`ImageRate.window <mdistiller.engine.console.ImageRate.window>`."""
        keys = sorted({k for m in window for k in m})
        means = {k: sum(m.get(k, 0.0) for m in window) / len(window) for k in keys}
        means = reduce_mean_dict(means, len(window))
        record = {**means, "lr": self.scheduler.lr, "img_per_s": img_s, "epoch": epoch, **self._memory()}
        log.log(record, step=self.step)
        terms = {k.removeprefix("loss_"): f"{v:.4g}" for k, v in means.items() if k.startswith("loss")}
        if bar is not None:
            bar.set_postfix(terms | {"lr": f"{self.scheduler.lr:.2e}", "img/s": f"{img_s:.1f}"}, refresh=False)
        if self.env.is_main:  # a plain line: train.log always, the console when there is no bar
            gn = f" | grad_norm {means['grad_norm']:.3g}" if "grad_norm" in means else ""
            line = (f"step {self.step}/{self.total_steps} (epoch {epoch}) | "
                    + " ".join(f"{k} {v}" for k, v in terms.items())
                    + f" | lr {self.scheduler.lr:.3g}{gn} | {img_s:.1f} img/s")
            self._say(line, console=bar is None)
        return record

    def export(self) -> Path | None:
        """Write ``student.safetensors`` (timm-loadable) into the run directory (main rank)."""
        if not self.env.is_main:
            barrier()
            return None
        d = self.cfg.DISTILLER
        kwargs = dict(d.STUDENT_KWARGS) | {"img_size": int(self.cfg.DATASET.INPUT_SIZE)}
        path = self.run_dir / "student.safetensors"
        try:
            self.distiller.export_student(path, d.STUDENT, kwargs)
        except Exception as e:  # a full disk or an I/O error: one sentence (the write is atomic, nothing partial)
            failure = ckpt.write_failure(path, e, f"the checkpoint {self.ckpt_path} is intact")
            if failure is None:
                raise
            raise failure from None
        finally:
            barrier()  # the other ranks never wait for an export that failed
        self.student_fingerprint = weights_fingerprint(self.distiller.student.model.state_dict())
        return path


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x
