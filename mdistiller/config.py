"""The yacs configuration: defaults, stacking of ``--cfg`` files, ``KEY VALUE`` overrides and validation.

Every key is defined here, once, with a comment (this file is the reference of all keys;
``python tools/train.py --print-config`` prints the resolved values). Key names follow the released code where
they exist (``DISTILLER.{TYPE,TEACHER,STUDENT}``, ``SiNGER.*``, ``SOLVER.*``, ``DATASET.*``, ``EXPERIMENT.*``,
``LOG.*``).
Where the released code differs from the paper, the paper is the default and the released behaviour is a
named option (see ``configs/imagenet/vit/singer_official.yaml`` and ``docs/released-code.md``).

This module imports no other layer of the package: checks that need the classes a config names (distillers,
models, datasets) are declared as ``"module:function"`` links of kind ``check`` in ``mdistiller/hooks.py`` and
run by :func:`validate_config` after the scalar checks (``mdistiller.hooks.config_checks``). Every ``SiNGER.*``
check is ``SiNGER.check_config`` (run by the declared ``check_config_against_models``), beside the parts the keys
choose.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yacs.config import CfgNode as CN

from mdistiller.hooks import config_checks, resolve

__all__ = ["CN", "ConfigError", "RESUME_ALLOWABLE_KEYS", "RESUME_FREE_KEYS", "RESUME_SCHEDULE_KEYS", "apply_overrides",
           "configs_dir", "flatten", "get_default_config", "load_config", "resolve_config_path",
           "resume_free", "validate_config"]


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is one sentence naming the key and the fix."""


_C = CN()

# ---------------------------------------------------------------------------------------------- experiment
_C.EXPERIMENT = CN()
_C.EXPERIMENT.PROJECT = "mdistiller"  # first path component of the run directory and the wandb project
_C.EXPERIMENT.NAME = ""  # run name; empty → TAG
_C.EXPERIMENT.TAG = "default"  # comma-separated tags (wandb); run-dir name when NAME is empty
_C.EXPERIMENT.OUTPUT_DIR = "output"  # runs live in OUTPUT_DIR/PROJECT/NAME
_C.EXPERIMENT.SEED = 0  # global seed; each rank uses SEED + rank for augmentation randomness
_C.EXPERIMENT.DEVICE = "auto"  # auto | cpu | cuda
# Process-group timeout (minutes): a rank that waits longer than this for a peer (one that hangs; a killed one is
# noticed at once) stops with one sentence and exit 3. Long enough for the main rank's checkpoint writes and exports
# while the others wait; torch's default is 30.
_C.EXPERIMENT.DIST_TIMEOUT_MIN = 10.0
# Keys of RESUME_ALLOWABLE_KEYS (below) that this resume may change from the checkpoint's values, e.g.
# ['SOLVER.LR']; the change is recorded in run_info.json with the step it took effect from. Every other key that
# changes what is trained is refused on resume (docs/reliability.md, "Run identity").
_C.EXPERIMENT.RESUME_ALLOW_CHANGES = []

# ---------------------------------------------------------------------------------------------- data
_C.DATASET = CN()
_C.DATASET.TYPE = "imagenet"  # a name of mdistiller.dataset.DATASETS (imagenet, toy_scenes, fashion_mnist)
_C.DATASET.ROOT = "data/imagenet"  # dataset folder (ignored by toy_scenes)
_C.DATASET.INPUT_SIZE = 224  # training crop (pixels, square); the student's img_size
_C.DATASET.NUM_WORKERS = 8  # data-loader workers per process
_C.DATASET.PIN_MEMORY = True
_C.DATASET.PERSISTENT_WORKERS = True
_C.DATASET.PREFETCH_FACTOR = 4
# how loader workers start: "" (the platform default: fork on Linux) | fork | spawn | forkserver. spawn/forkserver
# never copy a parent's threads (a fork after torch's threads started can, rarely, hang a worker on a copied lock);
# they re-import the dataset code in each worker (seconds), so pair them with PERSISTENT_WORKERS
_C.DATASET.WORKER_START = ""
_C.DATASET.TRAIN_SIZE = 0  # a generated dataset (toy_scenes): training images (0 → its default); others: 0
_C.DATASET.VAL_SIZE = 0  # held-out images for the feature-agreement check (0 → one batch)
_C.DATASET.NUM_CLASSES = 0  # classes for DISTILLER.TYPE Supervised (0 → the dataset's own count)
_C.DATASET.AUGMENT = True  # paper augmentation (RandomResizedCrop + flip) for training
# cpu: PIL decode + augmentation in the loader workers | device: workers read file bytes (and draw the crop/flip
# per sample), decode + augmentation run on the training device (nvjpeg on CUDA); folder datasets only
_C.DATASET.DECODE = "cpu"
# A training image that cannot be decoded stops the run naming the file (False); True: skip it (the next image of
# the dataset is used in its place), count the skips and report them in metrics.jsonl ("bad_images") and at the end.
_C.DATASET.SKIP_BAD_IMAGES = False
# How DATASET.ROOT stores ImageNet-style data (DATASET.TYPE imagenet; docs/data-formats.md): folder (train/<class>/*,
# val/<class>/*) | wds (WebDataset shards train-*.tar, val-*.tar of <key>.jpg + <key>.cls) | hfds (a Hugging Face
# dataset saved with save_to_disk, image + label columns) | images (any tree of unlabelled images; distillation only)
_C.DATASET.FORMAT = "folder"
# wds training reads: index (an index of the shards, cached once; map-style, exact resume) | stream (each loader
# worker reads its own shards front to back through a shuffle buffer; memory bounded by SHUFFLE_BUFFER)
_C.DATASET.WDS_MODE = "index"
_C.DATASET.SHUFFLE_BUFFER = 1000  # WDS_MODE stream: samples each loader worker holds for shuffling (0: none)

# ---------------------------------------------------------------------------------------------- distiller
_C.DISTILLER = CN()
_C.DISTILLER.TYPE = "SiNGER"  # FitNet | ViTKD | SiNGER | Supervised (non-distilled baseline: labels, no teacher)
_C.DISTILLER.TEACHER = "vit_large"  # short name (see mdistiller.models.MODEL_NAMES) or any timm ViT name
_C.DISTILLER.STUDENT = "vit_tiny"
_C.DISTILLER.TEACHER_WEIGHTS = "pretrained"  # pretrained | random | /path/to/file.safetensors|.pth
_C.DISTILLER.STUDENT_WEIGHTS = "random"  # random | pretrained | /path/to/file
# A weights file must provide every tensor of its model and nothing else (else one sentence naming the keys).
# False: partial loads are allowed (missing tensors keep their random init; a warning names them).
_C.DISTILLER.STRICT_WEIGHTS = True
_C.DISTILLER.TEACHER_KWARGS = CN(new_allowed=True)  # extra timm.create_model kwargs (e.g. depth, embed_dim)
_C.DISTILLER.STUDENT_KWARGS = CN(new_allowed=True)
# Distillation layers 𝒟 (0-based teacher block indices). Empty → the method's default: FITNET.LAYERS (FitNet) or
# SiNGER.M_LAYERS (SiNGER) plus the teacher's last block. The last teacher block is always included for FitNet and
# SiNGER (paper §4.5).
_C.DISTILLER.TEACHER_LAYERS = []
# Student blocks matched to TEACHER_LAYERS. Empty → relative depth l/(T−1) ↔ s/(S−1), last ↔ last.
_C.DISTILLER.STUDENT_LAYERS = []
_C.DISTILLER.GRID_ALIGN = "resize_input"  # resize_input | interpolate: how a teacher grid ≠ student grid is matched
_C.DISTILLER.KD_REDUCTION = "token"  # token: eq. 1, Σ over channels, mean over tokens | element: mean (released)
_C.DISTILLER.KD_CLS = False  # include the CLS token in L_KD (released: True); patches only by default (eq. 1)
_C.DISTILLER.LAYER_REDUCTION = "sum"  # sum over 𝒟 (eq. 9-11) | mean (released: every term divided by |𝒟|)
_C.DISTILLER.TEACHER_DTYPE = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
# Emulated artifacts (mdistiller.models.emulated): implant high-norm tokens into the teacher's residual stream.
_C.DISTILLER.ARTIFACTS = CN()
_C.DISTILLER.ARTIFACTS.ENABLE = False
_C.DISTILLER.ARTIFACTS.LAYER = 4  # teacher block after which tokens are implanted
_C.DISTILLER.ARTIFACTS.SHARE = 0.03  # share of patches per image (lowest local pixel variance first)
_C.DISTILLER.ARTIFACTS.SCALE = 10.0  # target norm as a multiple of the image's median patch norm
_C.DISTILLER.ARTIFACTS.DIRECTION = "principal"  # principal | null | random
_C.DISTILLER.ARTIFACTS.SEED = 0
_C.DISTILLER.ARTIFACTS.PERSIST = False  # re-implant after every later block (artifacts that reach the last layer)

# ---------------------------------------------------------------------------------------------- FitNet
_C.FITNET = CN()
# intermediate teacher layers of eq. 1; the final layer is appended automatically (the shipped configs: SiNGER's). A
# config that sets no FITNET.LAYERS anywhere (written before the key existed) keeps FitNet on SiNGER.M_LAYERS, as then
_C.FITNET.LAYERS = [17]
_C.FITNET.LOSS = CN()
_C.FITNET.LOSS.FEAT_WEIGHT = 1.0  # λ of eq. 1 summed over 𝒟
# Controls of SiNGER's ablation ladder (not the paper; docs/singer_modes.md). SCALE median: L_KD,l / s_l², s_l the
# median patch norm of F_l measured once on the first batch and stored in the checkpoint (as SiNGER.SCALE median).
_C.FITNET.SCALE = "none"  # none (eq. 1, raw units) | median (scale-aware units)
# TARGET teacher: eq. 1 | clamp: F_i · min(1, q_α/‖F_i‖), q_α each image's SiNGER.OUTLIER_Q-quantile of ‖F‖ (no
# trained parameter) | mask: the teacher, with the patches above that quantile left out of L_KD
_C.FITNET.TARGET = "teacher"

# ---------------------------------------------------------------------------------------------- ViTKD
_C.VITKD = CN()
_C.VITKD.MIMIC_LAYERS = [0, 1]  # teacher = student blocks for shallow mimicking (official ViTKD: first two)
_C.VITKD.MASK_RATIO = 0.5  # λ of the generation branch
_C.VITKD.ALPHA = 3e-5  # mimicking weight (official: sum-MSE / B)
_C.VITKD.BETA = 3e-6  # generation weight (official: sum-MSE / B / λ)

# ---------------------------------------------------------------------------------------------- SiNGER
_C.SiNGER = CN()
_C.SiNGER.M_LAYERS = [17]  # intermediate teacher layers l_inter; the final layer is appended automatically
_C.SiNGER.RANK = 16  # adapter rank r (Table 6a)
_C.SiNGER.OUTLIER_Q = 0.95  # α quantile of eq. 10 (Table 6b)
_C.SiNGER.INIT = "nullspace"  # nullspace (eq. 8) | random (Table 4 ablation)
_C.SiNGER.BASIS = "smallest"  # smallest: r smallest singular directions (eq. 16) | threshold: released rule
_C.SiNGER.NULL_THRES = 0.05  # ε for BASIS=threshold (App. A uses ε = 0.05)
_C.SiNGER.LINEARIZE_NORM = False  # fold the pre-FFN LayerNorm γ into W̃ (paper: no)
_C.SiNGER.LINEARIZE_LAYERSCALE = False  # fold LayerScale into W̃ (paper: no)
_C.SiNGER.USE_OUTLIER = True  # Table 4 switch for L_outlier
_C.SiNGER.USE_INFO = True  # Table 4 switch for L_info
_C.SiNGER.INFO = "paper"  # paper: eq. 11 Gram losses | official: the released plain-MSE / refined-intermediate variant
# OPT-IN SPEED-UP, NOT THE PAPER: share of each local batch (its first ceil(f·B) images; the sampler shuffles) on
# which the intermediate L_info re-runs teacher block l+1. 1.0 = eq. 11 exactly. See docs/benchmark.md.
_C.SiNGER.INFO_FRACTION = 1.0
# G of L_info (eq. 11): cosine = Gram of row-normalised patch tokens (released code; this default) | raw = F Fᵀ, the
# literal reading (paper §4.4) | none = no Gram, the tokens themselves (per-token squared error; the scaled preset)
_C.SiNGER.GRAM = "cosine"
_C.SiNGER.DETACH_TARGET = False  # stop L_KD gradients into the adapter (paper/released: not detached)
# SCALE-AWARE MODE, NOT THE PAPER (docs/singer_modes.md): none = eq. 9-12 in the teacher's raw units | median = every
# term in units of the fixed per-layer median patch norm, measured on the first batch (λ mean the same for any teacher)
_C.SiNGER.SCALE = "none"
_C.SiNGER.INFO_PATCHES = "all"  # all: L_info's Gram over every patch (paper) | inliers: pairs below the α-quantile of F
_C.SiNGER.ADAPTER_LR_SCALE = 1.0  # learning-rate multiplier of the adapters (paper: 1.0, one rate for everything)
_C.SiNGER.LOSS = CN()
_C.SiNGER.LOSS.FEAT_WEIGHT = 1.0  # weight of L_KD (eq. 12 has 1)
_C.SiNGER.LOSS.OUTLIER_WEIGHT = 1.0  # λ_outlier (App. K: all weights 1.0)
_C.SiNGER.LOSS.INFO_WEIGHT = 1.0  # λ_info

# ---------------------------------------------------------------------------------------------- solver
_C.SOLVER = CN()
_C.SOLVER.TYPE = "adamw"  # adamw | sgd
_C.SOLVER.LR = 1e-4  # learning rate for the GLOBAL batch SOLVER.BATCH_SIZE
_C.SOLVER.FINAL_LR = 1e-8  # cosine end value (absolute; at most SOLVER.LR, so the schedule never climbs)
_C.SOLVER.EPOCHS = 100
_C.SOLVER.MAX_STEPS = 0  # > 0: stop after this many optimizer steps (schedule length too)
_C.SOLVER.BATCH_SIZE = 512  # GLOBAL batch = per-process batch × world size
_C.SOLVER.WEIGHT_DECAY = 0.05
_C.SOLVER.MOMENTUM = 0.9  # SGD, in [0, 1)
_C.SOLVER.BETAS = [0.9, 0.999]  # AdamW
_C.SOLVER.EPS = 1e-8
_C.SOLVER.GRAD_CLIP = 1.0  # max grad norm; 0 = off
_C.SOLVER.SCHEDULE = "cosine"  # cosine | multistep | constant (all per iteration)
_C.SOLVER.WARMUP_EPOCHS = 0.0  # linear warm-up length in epochs (fractions allowed; at most SOLVER.EPOCHS)
_C.SOLVER.MILESTONES = [30, 60, 90]  # multistep: epochs
_C.SOLVER.GAMMA = 0.1  # multistep factor, in (0, 1]
_C.SOLVER.AMP = "none"  # none | bf16 (autocast, no scaler) | fp16 (autocast + GradScaler)
_C.SOLVER.FUSED = True  # fused optimizer kernels (CUDA and CPU; measured 9 ms vs 24 ms per AdamW step on CPU)
_C.SOLVER.COMPILE = False  # torch.compile the trainable module and the teacher feature path

# ---------------------------------------------------------------------------------------------- logging
_C.LOG = CN()
_C.LOG.FREQ = 20  # steps between metrics.jsonl records
_C.LOG.CKPT_EVERY_STEPS = 0  # also write checkpoints/last.pth every N steps (0 → once per epoch)
_C.LOG.AGREEMENT_EVERY_STEPS = 0  # teacher-student feature agreement on the held-out batch (0 → per epoch)
# per-term gradient norms (‖∇ λ·L_term‖ on each parameter group: student, adapters) every N steps (0 → off); costs one
# extra backward per loss term on those steps only
_C.LOG.GRAD_TERMS_EVERY_STEPS = 50
# wandb: off by default, offline unless WANDB_MODE says otherwise; the run id and group are kept in
# RUN_DIR/wandb_run.json so a resumed run continues the same wandb run, and `tools/lineval/*.py --wandb` /
# `tools/analyze.py --wandb` log runs of their own in its group; `mdistiller-sync RUN_DIR` uploads every segment
_C.LOG.WANDB = False
# feature-map figures (norm / PCA / similarity maps of teacher, refined teacher and student on held-out toy scenes, as
# `tools/analyze.py figures`) logged to wandb and TensorBoard (whichever is on) at the end of the run and every N steps
# (0 → end only)
_C.LOG.WANDB_FIGURES = True
_C.LOG.WANDB_FIGURES_EVERY_STEPS = 0
_C.LOG.TENSORBOARD = False
# rank-0 tqdm bar, drawn only when stderr is a terminal; otherwise (a pipe, a log file) or with False: a plain line
# every LOG.FREQ steps (always also in RUN_DIR/train.log)
_C.LOG.PROGRESS = True


# ---------------------------------------------------------------------------------------------- run identity
# A run is what its config says. On resume every key is compared with the checkpoint's config; the keys below are the
# only ones that may differ (the table in docs/reliability.md, "Run identity", mirrors these two constants).
#: keys (or ``SECTION.`` prefixes) that never change what is trained: logging, workers, paths, names, device, kernels
RESUME_FREE_KEYS: dict[str, str] = {
    "EXPERIMENT.PROJECT": "a name", "EXPERIMENT.NAME": "a name", "EXPERIMENT.TAG": "a name",
    "EXPERIMENT.OUTPUT_DIR": "a path", "EXPERIMENT.DEVICE": "where the same steps run",
    "EXPERIMENT.RESUME_ALLOW_CHANGES": "the permission itself",
    "EXPERIMENT.DIST_TIMEOUT_MIN": "how long a rank waits for a lost peer",
    "DATASET.ROOT": "a path (the same images moved)",
    "DATASET.NUM_WORKERS": "augmentation is seeded per sample, not per worker",
    "DATASET.PIN_MEMORY": "loader plumbing", "DATASET.PERSISTENT_WORKERS": "loader plumbing",
    "DATASET.PREFETCH_FACTOR": "loader plumbing", "DATASET.WORKER_START": "loader plumbing",
    "DATASET.VAL_SIZE": "the held-out batch is only measured",
    "DATASET.SKIP_BAD_IMAGES": "the steps trained so far met no undecodable image (the run would have stopped)",
    "SOLVER.FUSED": "the same update in other kernels", "SOLVER.COMPILE": "the same model compiled",
    "LOG.": "logging, checkpoint cadence and dashboards",
}
#: keys EXPERIMENT.RESUME_ALLOW_CHANGES may list: the saved state stays valid and the change is well defined from the
#: resumed step on (what it changes). SOLVER.TYPE never may: one optimizer's state cannot drive another.
RESUME_ALLOWABLE_KEYS: dict[str, str] = {
    "SOLVER.BATCH_SIZE": "the sample stream and the LR scaling",
    "SOLVER.AMP": "the numerics (and the fp16 loss scaler)",
    "DISTILLER.TEACHER_DTYPE": "the teacher's numerics",
    "DATASET.DECODE": "the decoder of the training images",
    **{f"SOLVER.{k}": "the learning rate from the resumed step on" for k in
       ("LR", "FINAL_LR", "EPOCHS", "MAX_STEPS", "WARMUP_EPOCHS", "SCHEDULE", "MILESTONES", "GAMMA")},
    **{f"SOLVER.{k}": "the optimizer update from the resumed step on" for k in
       ("WEIGHT_DECAY", "MOMENTUM", "BETAS", "EPS", "GRAD_CLIP")},
}
#: the keys the learning-rate schedule is made of: a change that leaves the rate of every step already trained
#: unchanged (e.g. a longer SOLVER.MAX_STEPS under a constant or multistep schedule, or while still warming up) is free
RESUME_SCHEDULE_KEYS = ("SOLVER.LR", "SOLVER.FINAL_LR", "SOLVER.EPOCHS", "SOLVER.MAX_STEPS", "SOLVER.WARMUP_EPOCHS",
                        "SOLVER.SCHEDULE", "SOLVER.MILESTONES", "SOLVER.GAMMA")


def resume_free(key: str) -> bool:
    """Whether ``key`` (flat, e.g. ``LOG.FREQ``) may change freely on resume (:data:`RESUME_FREE_KEYS`)."""
    return key in RESUME_FREE_KEYS or any(p.endswith(".") and key.startswith(p) for p in RESUME_FREE_KEYS)


def configs_dir() -> Path:
    """The folder holding the shipped YAML configs (``demo/``, ``imagenet/``): ``configs/`` of a source checkout, or
    the copy installed inside the package (``mdistiller/configs``) otherwise."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs", here / "configs"):
        if (cand / "demo").is_dir():
            return cand
    raise FileNotFoundError("the shipped configs are missing from this installation; reinstall mdistiller.")


def resolve_config_path(f: str | Path) -> Path:
    """``f`` itself when it exists; else a relative ``configs/...`` (or ``demo/...``) path inside
    :func:`configs_dir`, so ``--cfg configs/demo/singer.yaml`` works from any directory with an installed package."""
    path = Path(f)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    try:
        cand = configs_dir().joinpath(*parts)
    except FileNotFoundError:
        return path
    return cand if cand.is_file() else path


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping (a config, checkpoint metadata) as ``"SECTION.KEY": value``; lists and tuples
    (``torch.Size`` too) become lists, so equal values compare equal and serialise alike."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple | list) else v
    return out


def _coerce(value: str) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def apply_overrides(cfg: CN, opts: Sequence[Any], known: Mapping[str, Any] | None = None) -> CN:
    """Apply ``KEY VALUE`` pairs to the unfrozen ``cfg`` as ``load_config`` does: strings parsed as literals, an int
    for a float key made a float, new keys only under open nodes; one :class:`ConfigError` sentence per problem."""
    known = flatten(cfg) if known is None else known
    if len(opts) % 2:
        raise ConfigError(f"overrides must come as KEY VALUE pairs, got an odd list: {list(opts)}.")
    for key, raw in zip(opts[0::2], opts[1::2]):
        if key not in known and not _under_open_node(cfg, key):
            raise ConfigError(_unknown_key_message(key, known))
        value = _coerce(raw) if isinstance(raw, str) else raw
        default = known.get(key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if key not in known:  # a new key under an open node (e.g. DISTILLER.TEACHER_KWARGS.depth): set it directly
            *parents, leaf = key.split(".")
            node = cfg
            for part in parents:
                node = node[part]
            node[leaf] = value
            continue
        if (problem := _mismatch(key, value, default)) is not None:
            raise ConfigError(f"override {problem}.")
        try:
            cfg.merge_from_list([key, value])
        except (ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f"override {key}={raw!r} is invalid: {e}".rstrip(".") + ".") from None
    return cfg


def load_config(cfg_files: Sequence[str | Path] = (), opts: Sequence[str] = (), validate: bool = True) -> CN:
    """Defaults ← each YAML in ``cfg_files`` in order ← ``KEY VALUE`` pairs in ``opts``; validated and frozen.

    Raises :class:`ConfigError` with one sentence per problem (missing file, unknown key, wrong type, …).
    """
    cfg = get_default_config()
    known = flatten(cfg)
    fitnet_layers_given = "FITNET.LAYERS" in [str(k) for k in list(opts)[0::2]]
    for f in cfg_files:
        path = resolve_config_path(f)
        if path.is_dir():
            raise ConfigError(f"config file '{path}' is a directory; pass the YAML file inside it to --cfg.")
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; check the --cfg path.")
        for source, loaded in _load_with_bases(path):
            try:
                fitnet_layers_given |= "LAYERS" in (loaded.get("FITNET") or {})
                _coerce_numbers(loaded, cfg)
                _check_types(loaded, cfg)
                cfg.merge_from_other_cfg(loaded)
            except KeyError as e:
                raise ConfigError(f"{source}: {_unknown_key_message(str(e), known)}") from None
            except (ValueError, AssertionError) as e:  # ConfigError included: each names its key, not the file
                raise ConfigError(f"{source}: {e}".rstrip(".") + ".") from None
    apply_overrides(cfg, opts, known)
    if not fitnet_layers_given:
        _legacy_fitnet_layers(cfg)
    if validate:
        validate_config(cfg)
    cfg.freeze()
    return cfg


def _legacy_fitnet_layers(cfg: CN) -> None:
    """A FitNet config that sets ``FITNET.LAYERS`` nowhere was written before the key existed, when FitNet read its
    layers from ``SiNGER.M_LAYERS``: it keeps training those (old run directories load and resume unchanged)."""
    if str(cfg.DISTILLER.TYPE).lower() == "fitnet":
        cfg.FITNET.LAYERS = list(cfg.SiNGER.M_LAYERS)


def _load_with_bases(path: Path, depth: int = 0) -> list[tuple[Path, CN]]:
    """The YAML at ``path`` preceded by its ``_BASE_`` chain (a path relative to the file), base first, each with
    the file it came from (so an error names the file that holds the bad entry)."""
    if depth > 8:
        raise ConfigError(f"{path}: _BASE_ chain is deeper than 8 files; is there a cycle?")
    import yaml

    text = path.read_text()
    try:
        top = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where} ({problem}); fix the syntax.") from None
    if top is not None and not isinstance(top, dict):
        raise ConfigError(f"{path}: the file holds a {type(top).__name__}, not a mapping of KEY: value entries; "
                          "write e.g. 'SOLVER: {LR: 1.0e-4}'.")
    loaded = CN.load_cfg(text)
    base = loaded.pop("_BASE_", None)
    if base is None:
        return [(path, loaded)]
    base_path = (path.parent / str(base)).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: _BASE_ file '{base_path}' does not exist; fix the relative path.")
    return _load_with_bases(base_path, depth + 1) + [(path, loaded)]


# YAML 1.1 reads an exponent without a dot (``1e-3``) as text; for a float key it can only mean the number
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce_numbers(loaded: CN, defaults: CN) -> None:
    """Let YAML integers fill float keys (``LR: 1`` for ``LR: 1.0``), which yacs would reject as a type mismatch, and
    read ``LR: 1e-3`` (text to YAML 1.1) as the number it means."""
    for k, v in loaded.items():
        if k not in defaults:
            continue
        d = defaults[k]
        if isinstance(v, CN) and isinstance(d, CN):
            _coerce_numbers(v, d)
        elif isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            loaded[k] = float(v)
        elif isinstance(d, float) and isinstance(v, str) and _EXPONENT.match(v.strip()):
            loaded[k] = float(v)


def _type_name(value: object) -> str:
    return {"CfgNode": "section", "NoneType": "empty value"}.get(type(value).__name__, type(value).__name__)


def _a(value: object) -> str:
    """``a float``, ``an int``: the type name of ``value`` with its article."""
    name = _type_name(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _mismatch(key: str, value: object, default: object) -> str | None:
    """The sentence for a YAML or override ``value`` of the wrong kind for ``key`` (yacs' rule: the same type, or a
    list for a tuple and back; an empty value only where the default is empty too), else ``None``. A section
    (``SOLVER: 5``) or a single value (``LR: {a: 1}``) in the wrong place is named as such, instead of yacs' dump of
    the whole section."""
    if type(value) is type(default) or default is None:
        return None
    if value is None and not isinstance(default, CN):
        return f"{key} is empty but must be {_a(default)}, e.g. {default!r}"
    if isinstance(value, list | tuple) and isinstance(default, list | tuple):
        return None
    if isinstance(default, CN):
        first = next(iter(default), "KEY")
        return (f"{key} must be a section of KEY: value entries (e.g. '{key.rsplit('.', 1)[-1]}: {{{first}: ...}}'), "
                f"not the {_type_name(value)} {value!r}; indent its keys under it")
    if isinstance(value, CN):
        return (f"{key} is a single value ({_a(default)}, e.g. {default!r}), not a section; write "
                f"'{key.rsplit('.', 1)[-1]}: <{_type_name(default)}>'")
    return f"{key} is {value!r} ({_type_name(value)}) but must be {_a(default)}, e.g. {default!r}"


def _check_types(loaded: CN, defaults: CN, prefix: str = "") -> None:
    """Raise :class:`ConfigError` (one sentence, see :func:`_mismatch`) for the first entry of ``loaded`` whose
    kind does not fit ``defaults``; an empty section (``SOLVER:`` with nothing under it) is dropped, and an empty text
    or list entry reads as ``""`` or ``[]``."""
    for k in list(loaded):
        if k not in defaults:
            continue  # unknown keys: yacs' KeyError, reworded with the closest valid key
        value, default = loaded[k], defaults[k]
        if isinstance(default, CN) and value is None:
            del loaded[k]
        elif isinstance(default, str | list | tuple) and value is None:  # `NAME:` / `TEACHER_LAYERS:` left empty
            loaded[k] = "" if isinstance(default, str) else []
        elif isinstance(default, CN) and isinstance(value, CN):
            _check_types(value, default, f"{prefix}{k}.")
        elif (problem := _mismatch(f"{prefix}{k}", value, default)) is not None:
            raise ConfigError(problem + ".")


def _under_open_node(cfg: CN, key: str) -> bool:
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node, CN) or p not in node:
            return False
        node = node[p]
    return isinstance(node, CN) and node.is_new_allowed()


def _unknown_key_message(key: str, known: dict[str, object]) -> str:
    import difflib

    key = key.strip("'\"").replace("Non-existent config key: ", "")
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" did you mean '{close[0]}'?" if close else " see mdistiller/config.py for the valid keys."
    return f"unknown config key '{key}';" + hint


_CHOICES = {
    "DISTILLER.GRID_ALIGN": ("resize_input", "interpolate"),
    "DISTILLER.KD_REDUCTION": ("token", "element"),
    "DISTILLER.LAYER_REDUCTION": ("sum", "mean"),
    "DISTILLER.TEACHER_DTYPE": ("auto", "float32", "bfloat16"),
    "DISTILLER.ARTIFACTS.DIRECTION": ("principal", "null", "random"),
    "FITNET.SCALE": ("none", "median"),
    "FITNET.TARGET": ("teacher", "clamp", "mask"),
    "SOLVER.TYPE": ("adamw", "sgd"),
    "SOLVER.SCHEDULE": ("cosine", "multistep", "constant"),
    "SOLVER.AMP": ("none", "bf16", "fp16"),
    "EXPERIMENT.DEVICE": ("auto", "cpu", "cuda"),
    "DATASET.DECODE": ("cpu", "device"),
}


def validate_config(cfg: CN) -> None:
    """Choices and numeric ranges, then every registered check (``DISTILLER.TYPE`` and model names, layer indices
    and the method's bounds against the chosen architectures, ``DATASET.DECODE device`` against the dataset)."""
    flat = flatten(cfg)
    for key, choices in _CHOICES.items():
        value = str(flat[key]).lower()
        if value not in choices:
            raise ConfigError(f"{key} is '{flat[key]}' but must be one of: {', '.join(choices)}.")
    for key in ("SOLVER.WEIGHT_DECAY", "SOLVER.GRAD_CLIP", "SOLVER.MOMENTUM", "SOLVER.EPS", "SOLVER.FINAL_LR",
                "SOLVER.WARMUP_EPOCHS", "SOLVER.MAX_STEPS", "LOG.CKPT_EVERY_STEPS", "LOG.AGREEMENT_EVERY_STEPS",
                "LOG.GRAD_TERMS_EVERY_STEPS", "DATASET.NUM_WORKERS", "DATASET.TRAIN_SIZE", "DATASET.VAL_SIZE",
                "DATASET.NUM_CLASSES"):
        if flat[key] < 0:
            raise ConfigError(f"{key} is {flat[key]} but must not be negative (0 turns it off or picks the default).")
    start = str(cfg.DATASET.WORKER_START).lower()
    if start not in ("", "fork", "spawn", "forkserver"):
        raise ConfigError(f"DATASET.WORKER_START is '{cfg.DATASET.WORKER_START}'; use '' (platform default), fork, "
                          "spawn or forkserver.")
    for key in ("LOG.FREQ", "DATASET.PREFETCH_FACTOR"):
        if flat[key] < 1:
            raise ConfigError(f"{key} is {flat[key]} but must be an integer of at least 1.")
    betas = list(cfg.SOLVER.BETAS)
    if len(betas) != 2 or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"SOLVER.BETAS is {betas} but must be two numbers in [0, 1), e.g. [0.9, 0.999].")
    allowable = {k.upper() for k in RESUME_ALLOWABLE_KEYS}
    bad = [k for k in cfg.EXPERIMENT.RESUME_ALLOW_CHANGES if str(k).upper() not in allowable]
    if bad:
        raise ConfigError(f"EXPERIMENT.RESUME_ALLOW_CHANGES may only list keys whose change within a run is sound "
                          f"({', '.join(RESUME_ALLOWABLE_KEYS)}), not {bad}; a change of any other key is a new run.")
    if not 0.0 < cfg.VITKD.MASK_RATIO < 1.0:
        raise ConfigError(f"VITKD.MASK_RATIO is {cfg.VITKD.MASK_RATIO} but must lie inside (0, 1), e.g. 0.5.")
    for key in ("SOLVER.LR", "SOLVER.BATCH_SIZE", "DATASET.INPUT_SIZE", "EXPERIMENT.DIST_TIMEOUT_MIN"):
        if not flat[key] > 0:
            raise ConfigError(f"{key} is {flat[key]} but must be positive.")
    if cfg.SOLVER.EPOCHS < 0:
        raise ConfigError(f"SOLVER.EPOCHS is {cfg.SOLVER.EPOCHS} but must not be negative; give the number of epochs, "
                          "or 0 with SOLVER.MAX_STEPS > 0.")
    if cfg.SOLVER.EPOCHS < 1 and cfg.SOLVER.MAX_STEPS < 1:
        raise ConfigError("SOLVER.EPOCHS and SOLVER.MAX_STEPS are both 0; set at least one of them.")
    _check_schedule(cfg.SOLVER)
    if cfg.DISTILLER.STUDENT_LAYERS and len(cfg.DISTILLER.STUDENT_LAYERS) != len(cfg.DISTILLER.TEACHER_LAYERS):
        raise ConfigError(
            "DISTILLER.STUDENT_LAYERS must list one student block per DISTILLER.TEACHER_LAYERS entry "
            f"(got {len(cfg.DISTILLER.STUDENT_LAYERS)} vs {len(cfg.DISTILLER.TEACHER_LAYERS)}); or leave it empty."
        )
    if not 0.0 < cfg.DISTILLER.ARTIFACTS.SHARE < 1.0:
        raise ConfigError(f"DISTILLER.ARTIFACTS.SHARE is {cfg.DISTILLER.ARTIFACTS.SHARE} but must lie inside (0, 1).")
    for path in config_checks():  # declared in mdistiller/hooks.py
        resolve(path)(cfg)


def _check_schedule(s: CN) -> None:
    """The LR schedule (``engine/optim.py:IterationScheduler``) must never climb above ``SOLVER.LR`` nor reach 0 early:
    finite rates, ``FINAL_LR <= LR`` (cosine decays towards it), a multistep ``GAMMA`` in (0, 1] with milestones
    that are not negative, a warm-up no longer than the epochs, SGD momentum below 1."""
    for key in ("LR", "FINAL_LR", "WARMUP_EPOCHS", "GAMMA", "MOMENTUM", "WEIGHT_DECAY", "EPS"):
        if not math.isfinite(s[key]):
            raise ConfigError(f"SOLVER.{key} is {s[key]} but must be a finite number.")
    if s.FINAL_LR > s.LR:
        raise ConfigError(f"SOLVER.FINAL_LR {s.FINAL_LR:g} exceeds SOLVER.LR {s.LR:g}, so the schedule would raise "
                          "the learning rate instead of decaying it; set SOLVER.FINAL_LR at most SOLVER.LR "
                          "(e.g. 1e-8).")
    if str(s.SCHEDULE).lower() == "multistep":
        if not 0.0 < s.GAMMA <= 1.0:
            raise ConfigError(f"SOLVER.GAMMA is {s.GAMMA:g} but must lie in (0, 1] (the factor each milestone "
                              "multiplies the learning rate by), e.g. 0.1.")
        if any(not isinstance(m, int | float) or isinstance(m, bool) or m < 0 for m in s.MILESTONES):
            raise ConfigError(f"SOLVER.MILESTONES is {list(s.MILESTONES)} but must list epochs (numbers >= 0).")
    if s.MAX_STEPS == 0 and s.WARMUP_EPOCHS > s.EPOCHS:
        raise ConfigError(f"SOLVER.WARMUP_EPOCHS {s.WARMUP_EPOCHS:g} is longer than SOLVER.EPOCHS {s.EPOCHS}, so the "
                          "learning rate would never reach SOLVER.LR; shorten the warm-up.")
    if str(s.TYPE).lower() == "sgd" and s.MOMENTUM >= 1.0:
        raise ConfigError(f"SOLVER.MOMENTUM is {s.MOMENTUM:g} but must be below 1 (SGD diverges otherwise), e.g. 0.9.")
