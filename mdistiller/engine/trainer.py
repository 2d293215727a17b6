"""The training loop: one engine for every distiller, 1 CPU process or N GPUs under torchrun."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdistiller.config import CN, flatten
from mdistiller.distillers import Distiller, build_distiller
from mdistiller.hooks import get_hook

from . import checkpoint as ckpt
from .data import DeviceDecodedBatches, build_train_loader
from .distributed import DistEnv, all_gather_object, barrier, reduce_mean_dict
from .logging import MetricsWriter, truncate_metrics, write_run_info
from .optim import IterationScheduler, build_optimizer, clip_grad
from .sampler import ResumableDistributedSampler

__all__ = ["Trainer", "NonFiniteLossError", "run_dir_for", "load_run", "checkpoint_meta"]


class NonFiniteLossError(RuntimeError):
    """A loss term, an update or the state to checkpoint became NaN/inf; the last finite checkpoint is kept."""


# Config keys a resumed run must share with its checkpoint: (key, may EXPERIMENT.RESUME_ALLOW_CHANGES allow it, why)
_RESUME_KEYS = (
    ("SOLVER.TYPE", False, "the optimizer state of one optimizer cannot drive another"),
    ("SOLVER.BATCH_SIZE", True, "the sample stream and the LR scaling change"),
    ("SOLVER.AMP", True, "the numerics (and the fp16 loss scaler) change"),
)


def _config_value(dump: str, key: str) -> Any:
    import yaml

    node: Any = yaml.safe_load(dump) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_dir_for(cfg: CN) -> Path:
    """``EXPERIMENT.OUTPUT_DIR / PROJECT / (NAME or TAG)``."""
    e = cfg.EXPERIMENT
    return Path(e.OUTPUT_DIR) / e.PROJECT / (e.NAME or e.TAG)


def checkpoint_meta(cfg: CN, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: method, models, and every trainable parameter's shape."""
    d = cfg.DISTILLER
    return {"distiller": d.TYPE, "teacher": d.TEACHER, "student": d.STUDENT,
            "params": ckpt.param_shapes([(n, p) for n, p in model.named_parameters() if p.requires_grad])}


class Trainer:
    """Distils ``cfg`` into ``run_dir``: DDP over the trainable module only, AMP, clipping, per-iteration
    schedule, atomic resumable checkpoints (never the teacher), ``metrics.jsonl``, feature agreement on a held-out
    batch, and a timm-loadable ``student.safetensors`` at the end.
    """

    def __init__(self, cfg: CN, env: DistEnv, run_dir: str | Path | None = None) -> None:
        from mdistiller.dataset import build_dataset
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
        extra = {"num_images": data.TRAIN_SIZE} if data.TRAIN_SIZE and data.TYPE == "toy_scenes" else {}
        train_set = build_dataset(data.TYPE, "train", root=data.ROOT, input_size=data.INPUT_SIZE,
                                  train=bool(data.AUGMENT), **extra, **format_kwargs(data, "train"))
        if not device_decode:
            from mdistiller.dataset.bad_images import guard_images

            train_set = guard_images(train_set, skip=bool(data.SKIP_BAD_IMAGES))
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
        self.stop_signal: int | None = None
        self.saved_step: int | None = None  # step of the checkpoint last written or resumed from
        self.teacher_file = self._teacher_file_identity()
        self.bad_images = getattr(train_set, "skipped", None)  # DATASET.SKIP_BAD_IMAGES counter (shared by workers)
        self.grad_terms: dict[str, float] = {}  # per-term gradient norms of the last step that measured them

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
        from mdistiller.dataset.formats import format_kwargs

        data = self.cfg.DATASET
        n = data.VAL_SIZE or min(self.batch, 16)
        kwargs = ({"num_images": n} if data.TYPE == "toy_scenes" else {}) | format_kwargs(data, "val")
        try:
            ds = build_dataset(data.TYPE, "val", root=data.ROOT, input_size=data.INPUT_SIZE, train=False, **kwargs)
        except (FileNotFoundError, ValueError):
            return torch.empty(0)  # no held-out split: agreement is skipped
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
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        return {"meta": checkpoint_meta(self.cfg, self.distiller), "model": self.distiller.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": epoch, "step_in_epoch": in_epoch,
                "rng": all_gather_object(ckpt.rng_state()), "config": self.cfg.dump(),
                "teacher_file": self.teacher_file}

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
        if self.saved_step == failing_step - 1 and prev.exists():
            return (f"the last checkpoint ({last}, step {self.saved_step}) is finite but this step diverged from it, "
                    f"so {fix} and resume from the checkpoint before it with --resume {prev}")
        return f"the last finite checkpoint ({last}) is kept: {fix}, then rerun to resume from it"

    def check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """Refuse (one sentence, :class:`~mdistiller.engine.checkpoint.CheckpointMismatchError`) a checkpoint whose
        optimizer, batch size or precision differ from this run (the last two unless
        ``EXPERIMENT.RESUME_ALLOW_CHANGES`` lists them), or that was trained against a different teacher file."""
        ckpt.check_compatible(state, checkpoint_meta(self.cfg, self.distiller), path=path)
        allowed = {str(k).upper() for k in self.cfg.EXPERIMENT.RESUME_ALLOW_CHANGES}
        dump = state.get("config")
        for key, may_allow, why in _RESUME_KEYS if isinstance(dump, str) else ():
            old, new = _config_value(dump, key), _config_value(self.cfg.dump(), key)
            if old is None or str(old).lower() == str(new).lower() or (may_allow and key in allowed):
                continue
            fix = (f"resume with {key} {old}, or add {key} to EXPERIMENT.RESUME_ALLOW_CHANGES" if may_allow
                   else f"resume with {key} {old} or start a new run dir")
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {path} was trained with {key} {old} but this run has {new} ({why}); {fix}.")
        old_t, new_t = state.get("teacher_file"), self.teacher_file
        ident = [None if t is None else (t["size"], t["hash"]) for t in (old_t, new_t)]
        same = ident[0] == ident[1]
        if "teacher_file" in state and not same:
            before = f"'{old_t['path']}' ({old_t['size']} bytes)" if old_t else "no teacher file"
            now = f"'{new_t['path']}' ({new_t['size']} bytes)" if new_t else "no teacher file"
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {path} was trained against teacher weights {before} but DISTILLER.TEACHER_WEIGHTS now "
                f"gives {now}, a different file; resume with the original teacher file or start a new run dir.")

    def resume(self, path: str | Path) -> None:
        """Continue exactly where ``path`` stopped: weights, optimizer, schedule, scaler, RNG and sample stream."""
        path = Path(path)
        state = ckpt.load_checkpoint(path, map_location="cpu")
        self.check_resumable(state, path)
        self.distiller.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank])

    # ---------------------------------------------------------------------------------------------- loop
    def train_step(self, images: torch.Tensor, targets: Any = None) -> dict[str, float]:
        self.model.train()
        every = self.cfg.LOG.GRAD_TERMS_EVERY_STEPS
        measure_terms = bool(self.env.is_main and every and self.step % every == 0)
        self.distiller.keep_terms = measure_terms
        with self._autocast():
            out = self.model(images, targets) if self.distiller.needs_targets else self.model(images)
        bad = {k: v for k, v in out.items() if not torch.isfinite(v.detach()).all()}
        flag = torch.tensor([float(bool(bad))], device=self.env.device)
        if self.env.distributed:
            torch.distributed.all_reduce(flag)
        if flag.item() > 0:
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
        if self.heldout is None or self.heldout.numel() == 0:
            return {}
        self.distiller.eval()
        with self._autocast():
            res = self.distiller.agreement(self.heldout)
        self.distiller.train()
        return {f"agree/{k}": v for k, v in res.items()}

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Catch SIGINT/SIGTERM (a checkpoint, then a clean return); returns the handlers they replace, which
        :meth:`fit` puts back on exit (so Ctrl-C works again in a notebook after ``fit()``)."""
        def handler(signum, frame):  # noqa: ARG001
            self.stop_signal = signum

        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

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
        """Feature-map figures of the distiller in memory (``tools/analyze.py figures``) into wandb, in eval mode and
        with the training RNG streams left untouched; a failure only warns (figures must never stop a run)."""
        if not (self.env.is_main and log.wandb_run is not None and self.cfg.LOG.WANDB_FIGURES):
            return
        draw = get_hook("run_figures")  # the analysis package's, registered in mdistiller/__init__.py
        if draw is None:
            return
        was_training = self.distiller.training
        rng_devices = [self.env.device] if self.env.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng_devices):
                self.distiller.eval()
                paths = draw(self.run_dir, self.cfg, self.distiller)
            log.images({f"figures/{Path(p).stem}": p for p in paths}, step=self.step)
        except Exception as e:  # noqa: BLE001
            import warnings

            warnings.warn(f"feature-map figures for wandb failed at step {self.step} ({e}); training goes on.",
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

    def _summary_block(self, last: dict[str, Any], wall_s: float, steps_run: int) -> tuple[str, dict[str, Any]]:
        """The end-of-run block (final losses, agreement, wall time, throughput) and its values."""
        cfg = self.cfg
        images = steps_run * self.batch * self.env.world_size
        values: dict[str, Any] = {"final_step": self.step, "wall_s": round(wall_s, 2),
                                  "img_per_s_mean": images / max(wall_s, 1e-9)}
        values |= {f"final/{k}": v for k, v in last.items() if k.startswith("loss") or k.startswith("agree/")}
        values |= self._memory()
        losses = " ".join(f"{k.removeprefix('final/')} {v:.4g}" for k, v in values.items()
                          if k.startswith("final/loss"))
        agree = " ".join(f"{k.removeprefix('final/agree/')} {v:.4g}" for k, v in values.items()
                         if k.startswith("final/agree/"))
        mem = " ".join(f"{k.removeprefix('mem/')} {v:.2f}" for k, v in values.items() if k.startswith("mem/"))
        lines = [f"== {cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}: done, step "
                 f"{self.step}/{self.total_steps} ==",
                 f"   final losses: {losses or '-'}",
                 f"   agreement (held-out batch): {agree or '-'}",
                 f"   wall time {wall_s:.1f} s for {steps_run} steps this session, {values['img_per_s_mean']:.1f} "
                 f"img/s (world size {self.env.world_size}){'; ' + mem if mem else ''}",
                 f"   student: {self.run_dir / 'student.safetensors'}; curves: {self.run_dir / 'metrics.jsonl'}"]
        return "\n".join(lines), values

    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train to ``total_steps``; returns the last logged metrics. A SIGINT/SIGTERM writes a checkpoint and
        returns early with ``"interrupted": signal``."""
        cfg, env = self.cfg, self.env
        if resume:
            self.resume(resume)
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
                                                            "trainable_params": n_params})
            hparams = flatten(cfg) | {k: info[k] for k in ("git", "host", "world_size")}
        log = MetricsWriter(self.run_dir, env.is_main, tensorboard=cfg.LOG.TENSORBOARD, wandb=cfg.LOG.WANDB,
                            wandb_project=cfg.EXPERIMENT.PROJECT, wandb_name=cfg.EXPERIMENT.NAME or self.run_dir.name,
                            wandb_tags=[t for t in cfg.EXPERIMENT.TAG.split(",") if t], wandb_config=hparams)
        previous_handlers = self._install_signal_handlers()
        fit_t0, first_step = time.perf_counter(), self.step
        self._say(f"[mdistiller] {cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}: step "
                  f"{self.step}/{self.total_steps}, {self.steps_per_epoch} steps/epoch, global batch "
                  f"{self.batch * env.world_size}, world size {env.world_size}", console=False)
        bar = None
        if env.is_main and cfg.LOG.PROGRESS:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.DISTILLER.TYPE}", dynamic_ncols=True)
        last: dict[str, Any] = {}
        window: list[dict[str, float]] = []
        epoch_steps: list[dict[str, float]] = []
        epoch_t0 = time.perf_counter()
        t0, seen = time.perf_counter(), 0
        agree_every = cfg.LOG.AGREEMENT_EVERY_STEPS or self.steps_per_epoch
        ckpt_every = cfg.LOG.CKPT_EVERY_STEPS
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start=start * self.batch)
                for images, targets in self.loader:
                    images = images.to(env.device, non_blocking=True)
                    if self.distiller.needs_targets:
                        targets = _to_device(targets, env.device)
                    window.append(self.train_step(images, targets))
                    epoch_steps.append(window[-1])
                    if self.grad_terms:
                        log.log(self.grad_terms, step=self.step, epoch=epoch)
                        last.update(self.grad_terms)
                    seen += images.shape[0] * env.world_size
                    done_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % cfg.LOG.FREQ == 0 or done_epoch or self.step == self.total_steps:
                        last = self._log(log, window, epoch, seen / max(time.perf_counter() - t0, 1e-9), bar) | {
                            k: v for k, v in last.items() if k.startswith(("agree/", "grad/"))}
                        window, t0, seen = [], time.perf_counter(), 0
                    if self.step % agree_every == 0 or self.step == self.total_steps:
                        agr = self.agreement()
                        if agr:
                            log.log(agr, step=self.step, epoch=epoch)
                            last.update(agr)
                    if done_epoch or self.step == self.total_steps:  # one summary record per (partial) epoch
                        summary = self._epoch_summary(epoch_steps, epoch, time.perf_counter() - epoch_t0)
                        log.log(summary, step=self.step)
                        epoch_steps, epoch_t0 = [], time.perf_counter()
                    if (ckpt_every and self.step % ckpt_every == 0) or done_epoch or self.step == self.total_steps:
                        self.save()
                    fig_every = cfg.LOG.WANDB_FIGURES_EVERY_STEPS
                    if fig_every and self.step % fig_every == 0 and self.step < self.total_steps:
                        self._log_figures(log)
                    if bar is not None:
                        bar.update(1)
                    if self.stop_signal is not None:
                        self.save()
                        last["interrupted"] = int(self.stop_signal)
                        self._say(f"[mdistiller] stopped by signal {self.stop_signal} at step {self.step}; checkpoint "
                                  f"{self.ckpt_path}", console=False)
                        return last
                    if self.step >= self.total_steps:
                        break
            self.export()
            skipped = self.bad_images.value if self.bad_images is not None else 0
            if skipped:
                log.log({"bad_images": skipped}, step=self.step)
                last["bad_images"] = skipped
            if bar is not None:
                bar.close()
                bar = None
            self._log_figures(log)
            block, values = self._summary_block(last, time.perf_counter() - fit_t0, self.step - first_step)
            self._say(block)
            log.summary(values)
            return last
        finally:
            if bar is not None:
                bar.close()
            log.close()
            self._restore_signal_handlers(previous_handlers)

    def _epoch_summary(self, steps: list[dict[str, float]], epoch: int, seconds: float) -> dict[str, Any]:
        """``{"epoch_end": e, "epoch/<term>": mean over the epoch's steps (all ranks), ...}``."""
        keys = sorted({k for m in steps for k in m})
        means = reduce_mean_dict({k: sum(m.get(k, 0.0) for m in steps) / max(len(steps), 1) for k in keys},
                                 len(steps))
        img_s = len(steps) * self.batch * self.env.world_size / max(seconds, 1e-9)
        return {"epoch_end": epoch, "steps": len(steps), **{f"epoch/{k}": v for k, v in means.items()},
                "epoch/img_per_s": img_s}

    def _log(self, log: MetricsWriter, window: list[dict[str, float]], epoch: int, img_s: float, bar) -> dict:
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
        path = self.distiller.export_student(self.run_dir / "student.safetensors", d.STUDENT, kwargs)
        barrier()
        return path


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[CN, Distiller]:
    """Rebuild the distiller of a run directory (``config.yaml`` + ``checkpoints/last.pth``) for analysis."""
    from mdistiller.config import load_config

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run directory '{run_dir}' has no config.yaml; pass a directory written by "
                                "tools/train.py.")
    cfg = load_config([cfg_path])
    ckpt.seed_everything(cfg.EXPERIMENT.SEED)  # as the Trainer does: a random-init teacher comes back identical
    distiller = build_distiller(cfg, device=device)
    path = run_dir / "checkpoints" / "last.pth"
    try:
        state = ckpt.load_checkpoint(path, map_location="cpu")
    except ckpt.CheckpointError as e:  # the training wording ("resume from ...") does not fit an analysis
        why = "does not exist" if not path.is_file() else "is corrupt or truncated"
        raise ckpt.CheckpointError(
            f"cannot analyse run {run_dir}: its checkpoint {path} {why}; rerun tools/train.py on that run directory "
            "(it resumes and rewrites the checkpoint), then analyse it again.") from e
    ckpt.check_compatible(state, checkpoint_meta(cfg, distiller), path=path)
    distiller.load_state_dict(state["model"])
    distiller.eval()
    return cfg, distiller
