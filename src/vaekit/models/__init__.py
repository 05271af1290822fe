"""Layer 2 models. Importing this package registers every model in ``MODELS``."""

from .base import MODELS, ModelConfig, build_model
from .vae import VAE

__all__ = ["MODELS", "ModelConfig", "VAE", "build_model"]
