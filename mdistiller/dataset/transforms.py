"""Image preprocessing for the folder datasets: PIL image in, float32 ``[3, size, size]`` tensor in [0, 1] out.

No ``Normalize`` step: every model normalises its own input with its own mean/std (teacher and student
may differ), so datasets hand out plain [0, 1] pixels.

Interpolation is **bicubic**, as in the DeiT/timm ImageNet recipe that ViT distillation work (ViTKD,
SiNGER) trains with; pass ``interpolation=InterpolationMode.BILINEAR`` for the torchvision/mdistiller
default.  Resizing runs on PIL images (uint8), so bicubic overshoot is clipped before ``ToTensor``.
"""

from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

EVAL_RESIZE_RATIO = 256 / 224
"""The evaluation transform resizes the short side to ``round(size * 256 / 224)`` before the centre crop."""


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"transform size {size!r} is invalid: pass a positive integer number of pixels.")


def train_transform(size: int, interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> T.Compose:
    """The paper's ImageNet training augmentation: RandomResizedCrop(size) + RandomHorizontalFlip + ToTensor.

    RandomResizedCrop uses torchvision's defaults (scale 0.08-1, ratio 3/4-4/3).
    """
    _check_size(size)
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )


def eval_transform(size: int, interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> T.Compose:
    """Evaluation preprocessing: Resize(round(size * 256 / 224)) on the short side + CenterCrop(size) + ToTensor."""
    _check_size(size)
    return T.Compose(
        [
            T.Resize(round(size * 256 / 224), interpolation=interpolation),
            T.CenterCrop(size),
            T.ToTensor(),
        ]
    )
