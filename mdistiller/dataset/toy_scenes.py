"""Procedural "toy scenes": a file-free dataset with image-level labels, segmentation masks and depth.

Each scene is generated deterministically from ``(seed, split, index)`` and can be rendered at any
resolution, because it is first sampled as a small, resolution-free :class:`SceneSpec` (normalised
image coordinates and metres) and only then rasterised by :func:`render_scene`.

Geometry (a pinhole camera ``CAMERA_HEIGHT`` metres above a flat ground plane, looking level):

* the horizon is the image row ``v = spec.horizon`` (``v`` runs 0 at the top to 1 at the bottom);
* a ground pixel at row ``v`` lies at depth ``Z = f * CAMERA_HEIGHT / (v - horizon)`` with the focal
  length ``f`` (in image heights) chosen so that the bottom row is ``spec.bottom_depth`` metres away;
  depth therefore grows smoothly toward the horizon and is clipped to ``[DEPTH_MIN, DEPTH_MAX]``;
* the sky above the horizon is a smooth colour gradient (sometimes with soft clouds) at ``DEPTH_MAX``:
  a plain, low-information region;
* objects are flat, fronto-parallel cut-outs standing on the ground at a known depth ``Z``; their
  image size is ``f * height / Z`` so it shrinks with depth, and they are drawn far to near
  (painter's algorithm), so nearer objects occlude farther ones in the image, the mask and the depth.

There are ``NUM_CLASSES`` object categories; each has its own shape *and* texture/colour family
(see ``CLASS_NAMES``) so that a linear probe on frozen ViT features can tell them apart.

Targets: ``label`` is the category of the largest visible object (the one with the most pixels in the
rendered mask; objects in one scene all have different categories).  The sampler places the
"main" object nearest, fully inside the frame and at least 1.5x larger than any other, so the label
is the main object's category at any resolution from 32 px up (checked on 1,000 scenes; at 16 px,
2 in 1,000 differ).  ``mask`` holds 0 for background (sky and ground) and
``1..NUM_CLASSES`` for objects (category + 1).  ``depth`` is metres.
"""

from __future__ import annotations

import colorsys
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mdistiller.dataset.catalog import DATASETS

NUM_CLASSES = 8
"""Number of object categories (image-level classes)."""
NUM_SEG_CLASSES = NUM_CLASSES + 1
"""Number of mask values: 0 = background (sky and ground), 1..NUM_CLASSES = object category + 1."""
IGNORE_INDEX = 255
"""Reserved "ignore" mask value for segmentation losses; the generator itself never produces it."""
DEPTH_MIN = 1.0
"""Nearest depth in metres that any pixel can have."""
DEPTH_MAX = 10.0
"""Farthest depth in metres (the sky and the ground near the horizon)."""
CAMERA_HEIGHT = 1.0
"""Height of the camera above the ground plane, metres."""
CLASS_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross", "star", "hexagon", "crescent")
"""Category names; category ``c`` has mask value ``c + 1``."""
CLASS_TEXTURES: tuple[str, ...] = (
    "red concentric rings (bullseye)",
    "blue/white checkerboard",
    "green horizontal stripes",
    "yellow speckle",
    "magenta diagonal stripes",
    "cyan with navy polka dots",
    "orange with black vertical stripes",
    "violet smooth gradient",
)
"""Texture/colour family of each category, in the order of ``CLASS_NAMES``."""
SPLITS = ("train", "val", "test")
DEFAULT_NUM_IMAGES = {"train": 10_000, "val": 2_000, "test": 2_000}

_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_SALT = 0x70C5CE9E  # separates this generator's random streams from any other use of the same seed


# --------------------------------------------------------------------------------------------------
# Scene description (resolution-free)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a flat textured cut-out standing on the ground, facing the camera.

    ``category`` is 0-based (its mask value is ``category + 1``); ``x`` is the horizontal centre as a
    fraction of the image width; ``depth`` is its distance in metres; ``height`` its world size in
    metres (its image size is ``f * height / depth``); ``rotation`` an in-plane angle in degrees.
    Colours default to the category's colour family; texture frequency is in cycles per half-size.
    """

    category: int
    x: float
    depth: float
    height: float = 1.0
    rotation: float = 0.0
    color: tuple[float, float, float] | None = None
    color2: tuple[float, float, float] | None = None
    tex_freq: float = 2.0
    tex_phase: float = 0.0
    tex_seed: int = 0


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene: horizon, camera focal length (via ``bottom_depth``), sky, ground and objects.

    ``objects`` may be in any order: :func:`render_scene` sorts them far to near before drawing.
    ``ground_kind`` is 0 = checker tiles, 1 = grass/dirt noise, 2 = furrows receding to the horizon.
    ``clouds`` is the cloud opacity (0 = a plain gradient sky).
    """

    horizon: float = 0.4
    bottom_depth: float = 1.2
    sky_top: tuple[float, float, float] = (0.30, 0.50, 0.85)
    sky_horizon: tuple[float, float, float] = (0.80, 0.88, 0.95)
    clouds: float = 0.0
    ground_kind: int = 0
    ground_color: tuple[float, float, float] = (0.55, 0.52, 0.48)
    ground_color2: tuple[float, float, float] = (0.40, 0.37, 0.34)
    ground_scale: float = 1.0
    noise_seed: int = 0
    objects: tuple[ObjectSpec, ...] = ()

    @property
    def focal(self) -> float:
        """Focal length in image heights, so that the bottom image row sees the ground at ``bottom_depth``."""
        return self.bottom_depth * (1.0 - self.horizon) / CAMERA_HEIGHT


# --------------------------------------------------------------------------------------------------
# Shapes and textures, in object-local coordinates p (right), q (down), both in [-1, 1]
# --------------------------------------------------------------------------------------------------

_STAR_INNER = 0.45
_STAR_B = (_STAR_INNER * math.cos(math.pi / 5), _STAR_INNER * math.sin(math.pi / 5))


def _inside(cat: int, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Boolean mask of the points (p, q) inside the shape of category ``cat``."""
    if cat == 0:  # disc
        return p * p + q * q <= 1.0
    if cat == 1:  # square
        return np.maximum(np.abs(p), np.abs(q)) <= 0.9
    if cat == 2:  # triangle, apex up
        return (q <= 0.95) & (np.abs(p) * 1.95 <= q + 1.0)
    if cat == 3:  # ring
        r2 = p * p + q * q
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if cat == 4:  # cross
        ap, aq = np.abs(p), np.abs(q)
        return ((ap <= 0.32) & (aq <= 1.0)) | ((aq <= 0.32) & (ap <= 1.0))
    if cat == 5:  # five-pointed star, one point up: fold the angle into [0, 36 deg] and test one edge
        r = np.sqrt(p * p + q * q)
        theta = np.arctan2(p, -q)
        sector = 2 * math.pi / 5
        phi = np.abs(np.mod(theta + sector / 2, sector) - sector / 2)
        x, y = r * np.cos(phi), r * np.sin(phi)
        bx, by = _STAR_B
        return (x - 1.0) * by - y * (bx - 1.0) <= 0.0
    if cat == 6:  # hexagon, flat top and bottom
        aq = np.abs(q)
        return (aq <= 0.866) & (1.732 * np.abs(p) + aq <= 1.732)
    if cat == 7:  # crescent opening to the right
        return (p * p + q * q <= 1.0) & ((p - 0.42) ** 2 + (q + 0.15) ** 2 >= 0.78**2)
    raise ValueError(f"unknown toy-scene category {cat}: expected 0..{NUM_CLASSES - 1}.")


def _shape_stats() -> tuple[np.ndarray, np.ndarray]:
    """Area fraction of the [-1, 1]^2 box and lowest point (max q) of each shape, measured on a grid."""
    g = (np.arange(256) + 0.5) / 128.0 - 1.0
    p, q = np.meshgrid(g, g)
    area = np.empty(NUM_CLASSES)
    bottom = np.empty(NUM_CLASSES)
    for c in range(NUM_CLASSES):
        inside = _inside(c, p, q)
        area[c] = inside.mean()
        bottom[c] = q[inside].max()
    return area, bottom


_AREA, _BOTTOM = _shape_stats()


def _value_noise(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise: ``grid`` (random values) interpolated at continuous (x, y) with smoothstep."""
    gh, gw = grid.shape
    x0f, y0f = np.floor(x), np.floor(y)
    fx, fy = x - x0f, y - y0f
    fx, fy = fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy)
    x0, y0 = x0f.astype(np.int64) % gw, y0f.astype(np.int64) % gh
    x1, y1 = (x0 + 1) % gw, (y0 + 1) % gh
    top = grid[y0, x0] * (1.0 - fx) + grid[y0, x1] * fx
    bot = grid[y1, x0] * (1.0 - fx) + grid[y1, x1] * fx
    return top * (1.0 - fy) + bot * fy


def _soft(s: np.ndarray, sharp: float = 3.0) -> np.ndarray:
    """Map a [-1, 1] wave to a crisp-but-not-aliased [0, 1] square-ish wave."""
    return np.clip(0.5 + sharp * s, 0.0, 1.0)


def _texture(obj: ObjectSpec, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the secondary colour at each (p, q): the category's texture family."""
    cat, f, ph = obj.category, obj.tex_freq, obj.tex_phase
    tau = 2 * math.pi
    if cat == 0:  # concentric rings
        return _soft(np.sin(tau * (f * np.sqrt(p * p + q * q) + ph)))
    if cat == 1:  # checkerboard
        return _soft(np.sin(math.pi * (f * p + ph)) * np.sin(math.pi * (f * q + ph)), 4.0)
    if cat == 2:  # horizontal stripes
        return _soft(np.sin(tau * (f * q + ph)))
    if cat == 3:  # speckle
        grid = np.random.default_rng(obj.tex_seed).random((8, 8))
        return _value_noise(grid, (p + 1.0) * 2.0 * f, (q + 1.0) * 2.0 * f)
    if cat == 4:  # diagonal stripes
        return _soft(np.sin(tau * (f * (p + q) * 0.7071 + ph)))
    if cat == 5:  # polka dots
        cx = np.mod(p * f + ph, 1.0) - 0.5
        cy = np.mod(q * f + ph, 1.0) - 0.5
        return _soft((0.09 - (cx * cx + cy * cy)) * 20.0)
    if cat == 6:  # vertical stripes
        return _soft(np.sin(tau * (f * p + ph)))
    if cat == 7:  # smooth gradient (deliberately low-texture)
        return np.clip(0.5 + 0.5 * (q - p) * 0.7071, 0.0, 1.0)
    raise ValueError(f"unknown toy-scene category {cat}: expected 0..{NUM_CLASSES - 1}.")


# (hue deg, hue jitter, sat range, val range) of the primary colour; (hue, sat, val range) of the secondary.
_FAMILIES = (
    (0, 8, (0.75, 0.95), (0.75, 0.95), 0, 0.12, (0.92, 1.0)),  # disc: red on near-white
    (220, 10, (0.70, 0.90), (0.60, 0.85), 220, 0.06, (0.92, 1.0)),  # square: blue / white
    (120, 12, (0.60, 0.85), (0.60, 0.85), 130, 0.80, (0.22, 0.32)),  # triangle: green / dark green
    (52, 6, (0.75, 0.95), (0.85, 1.00), 30, 0.80, (0.35, 0.50)),  # ring: yellow / brown
    (310, 10, (0.60, 0.85), (0.75, 0.95), 290, 0.80, (0.25, 0.35)),  # cross: magenta / dark purple
    (185, 8, (0.60, 0.85), (0.75, 0.95), 230, 0.90, (0.25, 0.35)),  # star: cyan / navy
    (28, 6, (0.85, 1.00), (0.90, 1.00), 20, 0.50, (0.05, 0.15)),  # hexagon: orange / black
    (270, 10, (0.55, 0.80), (0.55, 0.75), 270, 0.15, (0.90, 1.0)),  # crescent: violet / lavender
)


def _hsv(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return (r, g, b)


def family_colors(category: int, rng: np.random.Generator | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Primary and secondary RGB colours of a category; random within its family if ``rng`` is given."""
    h, dh, (s0, s1), (v0, v1), h2, s2, (w0, w1) = _FAMILIES[category]
    if rng is None:
        return _hsv(h, (s0 + s1) / 2, (v0 + v1) / 2), _hsv(h2, s2, (w0 + w1) / 2)
    u = rng.random(5)
    c1 = _hsv(h + dh * (2 * u[0] - 1), s0 + (s1 - s0) * u[1], v0 + (v1 - v0) * u[2])
    c2 = _hsv(h2 + dh * (2 * u[3] - 1), s2, w0 + (w1 - w0) * u[4])
    return c1, c2


# --------------------------------------------------------------------------------------------------
# Sampling a scene from (seed, split, index)
# --------------------------------------------------------------------------------------------------

_SKIES = (  # (top, horizon) colours of clear, sunset and overcast skies
    ((0.25, 0.45, 0.85), (0.75, 0.85, 0.95)),
    ((0.35, 0.30, 0.60), (0.95, 0.65, 0.45)),
    ((0.58, 0.60, 0.65), (0.85, 0.86, 0.87)),
)
_GROUNDS = (  # (colour, colour2) per ground kind: stone tiles, grass/dirt, furrowed field
    ((0.62, 0.58, 0.52), (0.42, 0.38, 0.34)),
    ((0.36, 0.48, 0.26), (0.50, 0.42, 0.28)),
    ((0.52, 0.40, 0.28), (0.38, 0.30, 0.22)),
)


def _jitter(rng: np.random.Generator, rgb: tuple[float, ...], amount: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(rgb) * (1.0 + amount * (2 * rng.random() - 1)) + amount * (rng.random(3) - 0.5), 0, 1)
    return (float(c[0]), float(c[1]), float(c[2]))


def scene_rng(index: int, split: str = "train", seed: int = 0) -> np.random.Generator:
    """The random stream of one scene: independent per (seed, split, index), so splits never share a scene."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown toy-scenes split '{split}': use one of {', '.join(SPLITS)}.")
    if index < 0 or seed < 0:
        raise ValueError(f"toy-scenes index ({index}) and seed ({seed}) must be non-negative integers.")
    return np.random.default_rng(np.random.SeedSequence([_SALT, int(seed), _SPLIT_IDS[split], int(index)]))


def sample_scene(index: int, split: str = "train", seed: int = 0) -> SceneSpec:
    """Sample the resolution-free description of scene ``index`` of ``split`` (deterministic)."""
    rng = scene_rng(index, split, seed)
    horizon = float(rng.uniform(0.30, 0.50))
    bottom_depth = float(rng.uniform(DEPTH_MIN, 1.4))
    focal = bottom_depth * (1.0 - horizon) / CAMERA_HEIGHT
    sky_top, sky_hor = _SKIES[int(rng.integers(len(_SKIES)))]
    ground_kind = int(rng.integers(len(_GROUNDS)))
    g1, g2 = _GROUNDS[ground_kind]

    n_obj = int(rng.integers(1, 5))
    cats = rng.permutation(NUM_CLASSES)[:n_obj]
    objects = []
    # The main object (its category is the label): nearest, fully in frame, and clearly the largest.
    z_main = float(rng.uniform(bottom_depth + 0.4, 3.2))
    h_main = float(rng.uniform(0.9, 1.3))
    half = 0.5 * focal * h_main / z_main  # half-size as a fraction of the image
    margin = 1.1 * half
    x_main = float(rng.uniform(margin, 1.0 - margin))
    main_area = (h_main / z_main) ** 2 * _AREA[cats[0]]
    objects.append((int(cats[0]), x_main, z_main, h_main))
    for c in cats[1:]:
        z = float(rng.uniform(z_main + 0.7, 8.5))
        h = float(rng.uniform(0.6, 1.2))
        h_cap = z * math.sqrt(main_area / (1.5 * _AREA[c]))  # full area <= main area / 1.5
        objects.append((int(c), float(rng.uniform(0.05, 0.95)), z, min(h, 0.98 * h_cap)))

    specs = []
    for c, x, z, h in objects:
        col1, col2 = family_colors(c, rng)
        specs.append(
            ObjectSpec(
                category=c,
                x=x,
                depth=z,
                height=h,
                rotation=float(rng.uniform(-15.0, 15.0)),
                color=col1,
                color2=col2,
                tex_freq=float(rng.uniform(1.5, 2.5)),
                tex_phase=float(rng.random()),
                tex_seed=int(rng.integers(2**31)),
            )
        )
    return SceneSpec(
        horizon=horizon,
        bottom_depth=bottom_depth,
        sky_top=_jitter(rng, sky_top, 0.08),
        sky_horizon=_jitter(rng, sky_hor, 0.05),
        clouds=float(rng.uniform(0.5, 0.9)) if rng.random() < 0.4 else 0.0,
        ground_kind=ground_kind,
        ground_color=_jitter(rng, g1, 0.12),
        ground_color2=_jitter(rng, g2, 0.12),
        ground_scale=float(rng.uniform(0.6, 1.4)),
        noise_seed=int(rng.integers(2**31)),
        objects=tuple(specs),
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _fade(period_px: np.ndarray) -> np.ndarray:
    """Texture contrast as a function of its period in pixels: full above ~6 px, gone below 2 px (anti-aliasing)."""
    return np.clip((period_px - 2.0) / 4.0, 0.0, 1.0)


def _render_background(spec: SceneSpec, size: int, u: np.ndarray, v: np.ndarray):
    """Sky and ground colours, depth, and the ground row offset (first ground row)."""
    img = np.empty((size, size, 3), dtype=np.float32)
    depth = np.full((size, size), DEPTH_MAX, dtype=np.float32)
    g0 = int(np.searchsorted(v, spec.horizon, side="right"))  # first row strictly below the horizon
    noise_rng = np.random.default_rng(spec.noise_seed)
    top, hor = np.asarray(spec.sky_top, np.float32), np.asarray(spec.sky_horizon, np.float32)

    # Sky: smooth vertical gradient, optionally soft clouds.
    if g0 > 0:
        t = (v[:g0] / spec.horizon) ** 0.8
        sky = top[None, :] * (1.0 - t[:, None]) + hor[None, :] * t[:, None]  # [g0, 3]
        img[:g0] = sky[:, None, :]
        cloud_grid = noise_rng.random((6, 10))
        if spec.clouds > 0:
            n = _value_noise(cloud_grid, u[None, :] * 5.0, v[:g0, None] * 8.0)
            a = (np.clip((n - 0.5) * 3.5, 0.0, 1.0) * spec.clouds).astype(np.float32)
            cloud = np.float32(0.96) - np.float32(0.12) * v[:g0, None, None] / spec.horizon
            img[:g0] = img[:g0] * (1.0 - a[..., None]) + cloud * a[..., None]
    else:
        noise_rng.random((6, 10))

    if g0 >= size:
        return img, depth, g0
    # Ground: perspective depth, world coordinates (X across, Z forward), texture, shadows, haze.
    f = spec.focal
    zrow = np.clip(f * CAMERA_HEIGHT / np.maximum(v[g0:] - spec.horizon, 1e-6), DEPTH_MIN, DEPTH_MAX)
    depth[g0:] = zrow[:, None]
    gx = (u[None, :] - 0.5) * zrow[:, None] / f  # [Hg, W] metres
    gz = zrow[:, None]
    scale = spec.ground_scale
    z_px = f * size / zrow[:, None] ** 2  # pixels per metre along Z at each row
    x_px = f * size / zrow[:, None]  # pixels per metre along X
    if spec.ground_kind == 0:  # checker tiles
        s = np.sin(math.pi * gx / scale) * np.sin(math.pi * gz / scale)
        t = 0.5 + (_soft(s, 4.0) - 0.5) * _fade(2.0 * scale * z_px)
    elif spec.ground_kind == 1:  # grass / dirt noise
        grid = noise_rng.random((32, 32))
        cell = 0.35 * scale
        n = _value_noise(grid, gx / cell, gz / cell)
        t = 0.5 + (n - 0.5) * 1.6 * _fade(2.0 * cell * z_px)
    else:  # furrows receding toward the vanishing point
        t = 0.5 + (_soft(np.sin(2 * math.pi * gx / (0.7 * scale)), 1.5) - 0.5) * _fade(x_px * 0.7 * scale)
    t = t.astype(np.float32)
    c1, c2 = np.asarray(spec.ground_color, np.float32), np.asarray(spec.ground_color2, np.float32)
    ground = c1 * (1.0 - t[..., None]) + c2 * t[..., None]

    for obj in spec.objects:  # soft contact shadows, slightly behind each object
        _shadow(ground, spec, obj, size, u, v[g0:], zrow)

    haze = (0.85 * ((zrow - DEPTH_MIN) / (DEPTH_MAX - DEPTH_MIN)) ** 1.3).astype(np.float32)[:, None, None]
    img[g0:] = ground * (1.0 - haze) + hor * haze
    return img, depth, g0


def _shadow(ground: np.ndarray, spec: SceneSpec, obj: ObjectSpec, size: int, u, vg, zrow) -> None:
    f = spec.focal
    xo = (obj.x - 0.5) * obj.depth / f
    rx, rz = 0.5 * obj.height, 0.3 * obj.height
    zs = obj.depth + 0.1 * obj.height
    zlo, zhi = max(zs - rz, 1e-3), zs + rz
    rows = np.nonzero((zrow >= zlo) & (zrow <= zhi))[0]
    if rows.size == 0:
        return
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    ulo = 0.5 + min((xo - rx) * f / zlo, (xo - rx) * f / zhi)
    uhi = 0.5 + max((xo + rx) * f / zlo, (xo + rx) * f / zhi)
    c0, c1 = max(int(ulo * size), 0), min(int(math.ceil(uhi * size)), size)
    if c0 >= c1:
        return
    z = zrow[r0:r1, None]
    x = (u[None, c0:c1] - 0.5) * z / f
    d2 = ((x - xo) / rx) ** 2 + ((z - zs) / rz) ** 2
    k = (1.0 - 0.45 * np.clip((1.0 - d2) * 2.0, 0.0, 1.0)).astype(np.float32)
    ground[r0:r1, c0:c1] *= k[..., None]


def _draw_object(img, mask, depth, spec: SceneSpec, obj: ObjectSpec, size: int, u, v) -> None:
    f = spec.focal
    half = 0.5 * f * obj.height / obj.depth
    if half * size < 0.25:  # smaller than a pixel: invisible
        return
    vc = spec.horizon + f * CAMERA_HEIGHT / obj.depth - half * _BOTTOM[obj.category]  # stands on the ground
    reach = half * 1.42
    c0, c1 = max(int((obj.x - reach) * size), 0), min(int(math.ceil((obj.x + reach) * size)), size)
    r0, r1 = max(int((vc - reach) * size), 0), min(int(math.ceil((vc + reach) * size)), size)
    if c0 >= c1 or r0 >= r1:
        return
    du = (u[None, c0:c1] - obj.x) / half
    dv = (v[r0:r1, None] - vc) / half
    th = math.radians(obj.rotation)
    cs, sn = math.cos(th), math.sin(th)
    p = cs * du - sn * dv
    q = sn * du + cs * dv
    inside = _inside(obj.category, p, q)
    if not inside.any():
        return
    p, q = p[inside], q[inside]
    d1, d2 = family_colors(obj.category)
    col1 = np.asarray(obj.color if obj.color is not None else d1, np.float32)
    col2 = np.asarray(obj.color2 if obj.color2 is not None else d2, np.float32)
    t = _texture(obj, p, q).astype(np.float32)[:, None]
    rgb = col1 * (1.0 - t) + col2 * t
    rgb *= (1.0 - 0.12 * q).astype(np.float32)[:, None]  # lit from above
    haze = 0.4 * ((obj.depth - DEPTH_MIN) / (DEPTH_MAX - DEPTH_MIN)) ** 1.3
    rgb = rgb * (1.0 - haze) + np.asarray(spec.sky_horizon, np.float32) * haze
    img[r0:r1, c0:c1][inside] = rgb
    mask[r0:r1, c0:c1][inside] = obj.category + 1
    depth[r0:r1, c0:c1][inside] = obj.depth


def render_scene(spec: SceneSpec, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rasterise ``spec`` at ``size`` x ``size`` pixels.

    Returns ``(image float32 [size, size, 3] in [0, 1], mask int64 [size, size], depth float32 [size, size],
    label)``, where ``label`` is the category with the most visible pixels (ties: the nearest object;
    -1 only if no object is visible, which sampled scenes never produce).
    Objects are drawn far to near whatever their order in ``spec.objects``, so nearer ones occlude.
    """
    if size < 8:
        raise ValueError(f"toy-scene size {size} is too small: use at least 8 pixels.")
    u = ((np.arange(size) + 0.5) / size).astype(np.float32)
    v = u
    img, depth, _ = _render_background(spec, size, u, v)
    mask = np.zeros((size, size), dtype=np.int64)
    for obj in sorted(spec.objects, key=lambda o: -o.depth):  # painter's algorithm: far first
        _draw_object(img, mask, depth, spec, obj, size, u, v)
    np.clip(img, 0.0, 1.0, out=img)
    counts = np.bincount(mask.ravel(), minlength=NUM_SEG_CLASSES)[1:]
    if counts.max() == 0:
        label = -1
    else:
        best = np.flatnonzero(counts == counts.max())
        by_depth = sorted(spec.objects, key=lambda o: o.depth)
        label = next(o.category for o in by_depth if o.category in best)
    return img, mask, depth, int(label)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


@DATASETS.register("toy_scenes")
class ToyScenes(Dataset):
    """Procedural scenes with ``(image [3, size, size] in [0, 1], {"label", "mask", "depth"})`` items.

    ``split`` picks an independent random stream ("train", "val" or "test"); ``num_images`` defaults to
    ``DEFAULT_NUM_IMAGES[split]``; ``seed`` selects another family of scenes; ``train_augment`` applies a
    random horizontal flip (p = 0.5, from torch's global RNG, so DataLoader workers differ) to the image,
    mask and depth together.
    """

    #: the constructor keyword that sets how many images the dataset holds (``DATASET.TRAIN_SIZE``/``VAL_SIZE``;
    #: :func:`mdistiller.dataset.size_kwargs`)
    size_arg = "num_images"
    num_classes = NUM_CLASSES
    num_seg_classes = NUM_SEG_CLASSES
    ignore_index = IGNORE_INDEX
    depth_range = (DEPTH_MIN, DEPTH_MAX)
    classes = CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        size: int = 64,
        seed: int = 0,
        train_augment: bool = False,
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"unknown toy-scenes split '{split}': use one of {', '.join(SPLITS)}.")
        if num_images is None:
            num_images = DEFAULT_NUM_IMAGES[split]
        if num_images < 1:
            raise ValueError(f"toy-scenes num_images is {num_images}: it must be at least 1.")
        if size < 8:
            raise ValueError(f"toy-scenes size {size} is too small: use at least 8 pixels.")
        self.split, self.num_images, self.size, self.seed = split, int(num_images), int(size), int(seed)
        self.train_augment = bool(train_augment)

    @classmethod
    def build(cls, split: str, *, root: str | None, input_size: int, train: bool, **kwargs: Any) -> ToyScenes:
        """Factory used by :func:`mdistiller.dataset.build_dataset` (``root`` is ignored: no files needed)."""
        kwargs.setdefault("train_augment", train)
        return cls(split=split, size=input_size, **kwargs)

    def __len__(self) -> int:
        return self.num_images

    def spec(self, index: int) -> SceneSpec:
        """The resolution-free description of scene ``index``."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"toy-scenes index {index} is out of range for {self.num_images} images.")
        return sample_scene(index, self.split, self.seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if index < 0:
            index += self.num_images
        img, mask, depth, label = render_scene(self.spec(index), self.size)
        image_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        mask_t, depth_t = torch.from_numpy(mask), torch.from_numpy(depth)
        if self.train_augment and bool(torch.rand(()) < 0.5):
            image_t, mask_t, depth_t = image_t.flip(-1), mask_t.flip(-1), depth_t.flip(-1)
        return image_t, {"label": label, "mask": mask_t.contiguous(), "depth": depth_t.contiguous()}

    def __repr__(self) -> str:
        return (
            f"ToyScenes(split={self.split!r}, num_images={self.num_images}, size={self.size}, seed={self.seed}, "
            f"train_augment={self.train_augment})"
        )


# --------------------------------------------------------------------------------------------------
# Preview figure
# --------------------------------------------------------------------------------------------------


def seg_colors() -> list[tuple[float, float, float]]:
    """One display colour per mask value (background first), taken from each category's colour family."""
    return [(0.15, 0.15, 0.15)] + [family_colors(c)[0] for c in range(NUM_CLASSES)]


def save_preview(path: str | Path, n: int = 8, size: int = 96, split: str = "val", seed: int = 0) -> Path:
    """Write a PNG grid of ``n`` scenes (rows: image, mask, depth) with labelled colour bars; returns the path.

    From a shell (writes the figure in docs/)::

        python -c "from mdistiller.dataset.toy_scenes import save_preview as s; s('docs/figures/toy_scenes.png')"
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    ds = ToyScenes(split=split, num_images=n, size=size, seed=seed)
    fig = Figure(figsize=(1.45 * n + 2.2, 5.0), dpi=90)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, n + 1, width_ratios=[1.0] * n + [0.12], wspace=0.06, hspace=0.12)
    cmap = ListedColormap(seg_colors())
    norm = BoundaryNorm(np.arange(NUM_SEG_CLASSES + 1) - 0.5, NUM_SEG_CLASSES)
    mask_im = depth_im = None
    for i in range(n):
        image, target = ds[i]
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(CLASS_NAMES[target["label"]], fontsize=9)
        ax2 = fig.add_subplot(grid[1, i])
        mask_im = ax2.imshow(target["mask"].numpy(), cmap=cmap, norm=norm, interpolation="nearest")
        ax3 = fig.add_subplot(grid[2, i])
        depth_im = ax3.imshow(target["depth"].numpy(), cmap="magma_r", vmin=DEPTH_MIN, vmax=DEPTH_MAX)
        for a in (ax, ax2, ax3):
            a.set_xticks([])
            a.set_yticks([])
        if i == 0:
            ax.set_ylabel("image", fontsize=9)
            ax2.set_ylabel("mask", fontsize=9)
            ax3.set_ylabel("depth", fontsize=9)
    cb = fig.colorbar(mask_im, cax=fig.add_subplot(grid[1, n]), ticks=np.arange(NUM_SEG_CLASSES))
    cb.ax.set_yticklabels(["background", *CLASS_NAMES], fontsize=7)
    cb2 = fig.colorbar(depth_im, cax=fig.add_subplot(grid[2, n]))
    cb2.set_label("depth (m)", fontsize=8)
    cb2.ax.tick_params(labelsize=7)
    fig.suptitle(f"toy scenes ({split} split, {size} px): label = category of the largest visible object", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def time_generation(size: int, n: int = 20) -> float:
    """Mean seconds to sample and render one scene at ``size`` pixels on this core (a quick benchmark)."""
    start = time.perf_counter()
    for i in range(n):
        render_scene(sample_scene(i, "train"), size)
    return (time.perf_counter() - start) / n
