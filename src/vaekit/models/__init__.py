"""Layer 2 models. Importing this package registers every model in ``MODELS``."""

from .base import MODELS, ModelConfig, build_model
from .vae import VAE
from .iwae import IWAE  # noqa: E402  (registers "iwae")

__all__ = ["IWAE", "MODELS", "ModelConfig", "VAE", "build_model"]
