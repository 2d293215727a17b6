"""Analytic matmul FLOP counts of ViT pieces, the bricks of a training step's "FLOP bound" (``tools/bench.py``).

Only matrix products are counted (patch embedding, QKV, attention scores and values, output projection, MLP,
the methods' projections, adapters, Gram matrices and convolutions), at 2 FLOPs per multiply-add. LayerNorm,
GELU, softmax, losses and the optimizer are left out: they are memory-bound and small next to the matmuls of a ViT.

Convention of the bound (per image):

* teacher: one forward of the patch embedding and blocks ``0 … deepest`` that the method needs (no backward);
* student: 3 × its forward (forward + backward for inputs and weights ≈ 2 × forward), up to its deepest used block;
* method extras (each distiller's ``extra_flops``): trainable layers (projections, adapters, ViTKD generator)
  count 3 × their forward; SiNGER's L_info re-runs teacher block ``l+1`` with gradients for its *input* only
  (frozen weights): 2 × a block forward;
  a Gram matrix ``F Fᵀ`` costs ``2·P²·d`` forward and twice that again in backward when ``F`` needs a gradient.

A block with ``N`` tokens (prefix included), width ``d`` and MLP hidden width ``h`` costs
``2·N·d·3d + 2·N²·d + 2·N²·d + 2·N·d·d + 2·N·d·h + 2·N·h·d`` FLOPs (the head count does not enter).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ViTShape",
    "block_flops",
    "forward_flops",
    "gram_flops",
    "linear_flops",
    "patch_embed_flops",
    "vit_shape",
]


@dataclass(frozen=True)
class ViTShape:
    """What the FLOP count needs to know about a ViT: depth, width, MLP hidden width, prefix tokens, patch size."""

    depth: int
    width: int
    mlp_hidden: int
    num_prefix: int = 1
    patch_size: int = 16
    in_chans: int = 3

    def tokens(self, patches: int) -> int:
        """Sequence length for ``patches`` patch tokens (CLS and registers included)."""
        return self.num_prefix + patches


def vit_shape(model) -> ViTShape:
    """Read a :class:`ViTShape` from a timm ``VisionTransformer`` (or anything with the same attributes)."""
    blk = model.blocks[0]
    fc1 = getattr(getattr(blk, "mlp", None), "fc1", None)
    hidden = int(fc1.out_features) if fc1 is not None else 4 * int(model.embed_dim)
    pe = model.patch_embed
    ps = pe.patch_size[0] if isinstance(pe.patch_size, tuple | list) else pe.patch_size
    in_chans = int(getattr(getattr(pe, "proj", None), "in_channels", 3))
    return ViTShape(depth=len(model.blocks), width=int(model.embed_dim), mlp_hidden=hidden,
                    num_prefix=int(getattr(model, "num_prefix_tokens", 1)), patch_size=int(ps), in_chans=in_chans)


def linear_flops(n: int, d_in: int, d_out: int) -> int:
    """``2·n·d_in·d_out``: a linear map applied to ``n`` tokens."""
    return 2 * n * d_in * d_out


def block_flops(tokens: int, width: int, mlp_hidden: int) -> int:
    """Matmul FLOPs of one pre-norm ViT block on ``tokens`` tokens (see the module docstring)."""
    n, d, h = tokens, width, mlp_hidden
    qkv = linear_flops(n, d, 3 * d)
    attn = 2 * (2 * n * n * d)  # Q Kᵀ and (softmax) V, summed over heads
    proj = linear_flops(n, d, d)
    mlp = linear_flops(n, d, h) + linear_flops(n, h, d)
    return qkv + attn + proj + mlp


def patch_embed_flops(patches: int, patch_size: int, width: int, in_chans: int = 3) -> int:
    """The patchify convolution as a linear map of each ``in_chans·p·p`` patch to ``width``."""
    return linear_flops(patches, in_chans * patch_size * patch_size, width)


def forward_flops(shape: ViTShape, patches: int, blocks: int | None = None) -> int:
    """Patch embedding plus the first ``blocks`` blocks (all when ``None``) on ``patches`` patch tokens."""
    nb = shape.depth if blocks is None else blocks
    if not 0 <= nb <= shape.depth:
        raise ValueError(f"cannot run {nb} blocks of a {shape.depth}-block model.")
    pe = patch_embed_flops(patches, shape.patch_size, shape.width, shape.in_chans)
    return pe + nb * block_flops(shape.tokens(patches), shape.width, shape.mlp_hidden)


def gram_flops(tokens: int, width: int) -> int:
    """``2·P²·d``: one Gram matrix ``F Fᵀ`` of ``P`` tokens of width ``d``."""
    return 2 * tokens * tokens * width
