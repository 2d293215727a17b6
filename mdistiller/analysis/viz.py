"""Figure helpers the analysis commands share (matplotlib, Agg backend): titles that say "emulated artifacts",
small PNGs, patch-norm maps, 3-component PCA maps, similarity to a marked patch. Each command's own figures live
in its module under :mod:`mdistiller.analysis.commands`.

Every figure made from emulated artifacts says "emulated artifacts" in its title. Type sizes and resolution are
set in one place, :data:`STYLE` and :data:`DPI`, applied by :func:`style` around every command's figures (no plot
passes its own font size): 11 pt text and 10 pt tick labels at 110 dpi, i.e. 14–17 px letters in figures of
1000–1700 px. PNGs above :data:`MAX_BYTES` are palette-encoded so each stays small enough to commit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .render import EMULATED_LABEL  # noqa: E402

__all__ = [
    "BASIS_STYLE",
    "figure_title",
    "finish_figure",
    "minor_log_label",
    "norm_map",
    "norm_similarity_figure",
    "pca_map",
    "save_figure",
    "show_image",
    "show_map",
    "signed_norm_map",
    "similarity_map",
    "style",
]

DPI = 110
STYLE = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 13,
}
MAX_BYTES = 150_000
BASIS_STYLE = {
    "singer_null": ("SiNGER null (W̃)", "tab:green"),
    "singer_null_ln": ("SiNGER null (W̃ with LN γ, LayerScale)", "tab:olive"),
    "jacobian": ("Jacobian null", "tab:blue"),
    "random": ("random", "tab:gray"),
    "principal": ("principal (W̃)", "tab:red"),
}


# ---------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib's settings for the figures made inside: :data:`STYLE` (restored on exit)."""
    with plt.rc_context(STYLE):
        yield


def figure_title(text: str, emulated: bool) -> str:
    """``text`` with the emulated-artifacts label appended when ``emulated``."""
    return f"{text} ({EMULATED_LABEL})" if emulated else text


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save at :data:`DPI`; a PNG above :data:`MAX_BYTES` is re-encoded with a 256-colour palette (plots need no
    more), which keeps every figure small enough to commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
    return path


def finish_figure(fig: plt.Figure, title: str, emulated: bool, path: Path) -> Path:
    """Give ``fig`` its suptitle (:func:`figure_title`), lay it out and :func:`save_figure` it to
    ``path``."""
    fig.suptitle(figure_title(title, emulated))
    fig.tight_layout()
    return save_figure(fig, path)


def _grid_of(n: int) -> tuple[int, int]:
    h = int(math.isqrt(n))
    if h * h != n:
        raise ValueError(f"{n} patches do not form a square grid; pass the grid explicitly.")
    return h, h


def _as_grid(values: torch.Tensor, grid: Sequence[int] | None) -> np.ndarray:
    h, w = grid if grid is not None else _grid_of(values.shape[0])
    return values.detach().double().reshape(h, w, *values.shape[1:]).cpu().numpy()


def norm_map(patches: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """Per-patch ℓ2 norm of ``[P, d]`` tokens as an ``[h, w]`` map (Figure 2, 9, 10)."""
    return _as_grid(patches.double().norm(dim=-1), grid)


def signed_norm_map(delta: torch.Tensor, ref: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """``‖ΔF_i‖`` signed by ``cos(ΔF_i, F_i)`` (Figure 4a): negative where the adapter shrinks the token."""
    cos = torch.nn.functional.cosine_similarity(delta.double(), ref.double(), dim=-1)
    return _as_grid(delta.double().norm(dim=-1) * torch.sign(cos), grid)


def pca_map(patches: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """First three principal components of ``[P, d]`` tokens as an RGB ``[h, w, 3]`` map in ``[0, 1]`` (Figure 9).

    Components are min–max scaled independently; each sign is fixed so its largest-magnitude score is positive.
    """
    x = patches.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    k = min(3, *x.shape)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    scores = x @ vh[:k].T
    signs = torch.sign(scores.gather(0, scores.abs().argmax(dim=0, keepdim=True)))
    scores = scores * torch.where(signs == 0, torch.ones_like(signs), signs)
    lo, hi = scores.min(dim=0).values, scores.max(dim=0).values
    rgb = (scores - lo) / (hi - lo).clamp_min(1e-12)
    if k < 3:
        rgb = torch.cat([rgb, rgb.new_zeros(rgb.shape[0], 3 - k)], dim=1)
    return _as_grid(rgb, grid)


def similarity_map(patches: torch.Tensor, index: int, grid: Sequence[int] | None = None,
                   other: torch.Tensor | None = None) -> np.ndarray:
    """Cosine similarity of patch ``index`` to every patch (of ``other`` if given, Figure 11) as an ``[h, w]`` map."""
    src = patches[index].double()
    dst = (other if other is not None else patches).double()
    return _as_grid(torch.nn.functional.cosine_similarity(dst, src[None], dim=-1), grid)


def minor_log_label(value: float, _pos: int) -> str:
    """Label the 2× and 5× minor ticks of a log axis with plain numbers (readable narrow log ranges)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:.3g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def show_map(ax: plt.Axes, img: np.ndarray, title: str, cmap: str = "viridis", vmin: float | None = None,
             vmax: float | None = None, colorbar: bool = True, mark: Sequence[int] | None = None) -> None:
    """Draw a 2-D map on ``ax`` without ticks, with an optional colorbar and a red × at grid cell ``mark``
    (row, col)."""
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if mark is not None:
        ax.plot([mark[1]], [mark[0]], marker="x", color="red", markersize=8, markeredgewidth=2)
    if colorbar and img.ndim == 2:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def show_image(ax: plt.Axes, image: torch.Tensor, title: str, mark: Sequence[int] | None = None,
               grid: Sequence[int] | None = None) -> None:
    """Draw an image ``[3, H, W]`` in [0, 1] on ``ax`` without ticks; with ``grid``, a red × at the centre of patch
    ``mark`` (row, col).
    """
    arr = image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    ax.imshow(arr)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if mark is not None and grid is not None:
        h, w = arr.shape[:2]
        ax.plot([(mark[1] + 0.5) * w / grid[1]], [(mark[0] + 0.5) * h / grid[0]], marker="x", color="red",
                markersize=9, markeredgewidth=2.5)


def norm_similarity_figure(image: torch.Tensor, panels: Sequence[tuple[str, torch.Tensor]], grid: Sequence[int],
                           mark: int, title: str, path: str | Path) -> Path:
    """Input image, then per panel ``(title, patch tokens [P, d])`` its patch-norm map (top) and the cosine
    similarity of every patch to patch ``mark`` (bottom, marked ×) on the ``grid``."""
    h, w = grid
    with style():
        fig, axes = plt.subplots(2, len(panels) + 1, figsize=(3.1 * (len(panels) + 1), 6.2), squeeze=False)
        for ax in axes[:, 0]:
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.axis("off")
        axes[0, 0].set_title("input (toy scene)")
        rc = (mark // w, mark % w)
        for j, (name, tokens) in enumerate(panels, 1):
            show_map(axes[0, j], norm_map(tokens, grid), f"{name}\npatch norm", cmap="inferno")
            show_map(axes[1, j], similarity_map(tokens, mark, grid), "cosine to × patch", vmin=-1, vmax=1, mark=rc)
        fig.suptitle(title)
        fig.tight_layout()
        return save_figure(fig, Path(path))
