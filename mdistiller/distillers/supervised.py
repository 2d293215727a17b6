"""The non-distilled baseline: the student trained on labels with the same budget, no teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, LayerPlan


class Supervised(Distiller):
    """Student + a linear classifier on the CLS token after the final norm, trained with cross-entropy on the
    dataset's labels (toy scenes: ``target["label"]``). The counterpart of paper Table 1's "non-distilled" rows
    under the same training budget; only the backbone is exported (the classifier is dropped)."""

    uses_student_final_norm = True
    needs_targets = True
    needs_teacher = False

    def __init__(self, student: nn.Module, num_classes: int) -> None:
        depth = len(student.blocks)
        super().__init__(student, None, LayerPlan([depth - 1], [depth - 1]))
        if num_classes < 2:
            raise ValueError(
                f"the supervised baseline needs at least 2 classes, got {num_classes}; set DATASET.NUM_CLASSES."
            )
        self.classifier = nn.Linear(self.student.width, num_classes)

    @classmethod
    def from_config(cls, cfg, student, teacher=None, plan=None) -> Supervised:
        """The baseline with :func:`dataset_num_classes` classes; ``teacher`` and ``plan`` are ignored."""
        return cls(student, num_classes=dataset_num_classes(cfg))

    def teacher_request(self) -> list[int]:
        """No teacher block: the baseline reads no teacher."""
        return []  # no teacher

    def forward(self, images: torch.Tensor, targets) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Cross-entropy of the classifier on the student's final-norm CLS token against the labels
        (``targets["label"]`` or ``targets`` itself): ``loss`` and ``loss_ce``."""
        labels = targets["label"] if isinstance(targets, dict) else targets
        last = self.plan.student[-1]
        tokens = self.student.model.norm(self.student(images, [last])[last])
        cls = self.student.split(tokens, self.student_grid(images)).cls
        loss = F.cross_entropy(self.classifier(cls), labels.long())
        self.keep({"ce": loss})
        return {"loss": loss, "loss_ce": loss.detach()}

    def agreement(self, images: torch.Tensor) -> dict[str, float]:
        """Nothing: there is no teacher to agree with."""
        return {}  # no teacher to agree with


def dataset_num_classes(cfg) -> int:
    """``DATASET.NUM_CLASSES``, or the dataset class's ``num_classes`` attribute when it is 0."""
    if cfg.DATASET.NUM_CLASSES:
        return int(cfg.DATASET.NUM_CLASSES)
    from mdistiller.dataset import DATASETS

    n = getattr(DATASETS.get(cfg.DATASET.TYPE), "num_classes", None)
    if not n:
        raise ValueError(
            f"dataset '{cfg.DATASET.TYPE}' does not declare its number of classes; set DATASET.NUM_CLASSES."
        )
    return int(n)
