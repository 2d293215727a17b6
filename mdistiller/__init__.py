"""mdistiller (SiNGER edition): distilling large Vision Transformers into small ones.

Methods: FitNet (eq. 1), ViTKD (Yang et al. 2024) and SiNGER (eq. 6-12) of
*SiNGER: A Clearer Voice Distills Vision Transformers Further* (ICLR 2026).
"""

from .config import register_check

__version__ = "0.1.0"

# Config checks that need the layers above mdistiller.config, imported only when a config is validated.
register_check("mdistiller.distillers.build:check_config_against_models")
register_check("mdistiller.dataset.device_decode:check_decode_config")
