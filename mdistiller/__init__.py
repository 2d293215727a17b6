"""mdistiller (SiNGER edition): distilling large Vision Transformers into small ones.

Methods: FitNet (eq. 1), ViTKD (Yang et al. 2024) and SiNGER (eq. 6-12) of
*SiNGER: A Clearer Voice Distills Vision Transformers Further* (ICLR 2026).
"""

__version__ = "0.1.0"
