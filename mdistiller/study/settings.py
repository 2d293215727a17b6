"""What one study invocation measures: its matrix, methods, seeds, the per-run budget and the probes' sizes.

Plain data (the values of ``tools/study.py``'s flags once the matrix's defaults are filled in), shared by the job
planning (:mod:`mdistiller.study.jobs`) and the report (:mod:`mdistiller.study.render`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StudySettings"]


@dataclass(frozen=True)
class StudySettings:
    """One invocation of the study: ``matrix`` (a name of :data:`mdistiller.study.MATRICES`), the methods and seeds
    it runs, every run's budget (``steps`` of ``batch`` images at ``size`` px, precision ``amp`` as resolved, on
    ``device``), the probes' sizes (toy scenes ``probe_train``/``probe_test``, Fashion-MNIST
    ``fmnist_train``/``fmnist_test``), the held-out scenes of the refinement numbers, and which probes run."""

    matrix: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    probe_labels: tuple[str, ...]
    batch: int = 32
    size: int = 112
    probe_train: int = 400
    probe_test: int = 200
    fmnist_train: int = 600
    fmnist_test: int = 300
    heldout: int = 64
    device: str = "cpu"
    amp: str = "none"
    no_probes: bool = False
