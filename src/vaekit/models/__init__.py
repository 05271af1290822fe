"""Layer 2 models. Importing this package registers every model in ``MODELS``."""

from .base import MODELS, ModelConfig, build_model
from .vae import VAE
from .iwae import IWAE  # noqa: E402  (registers "iwae")
from .hierarchical import TwoLayerIWAE, TwoLayerVAE  # noqa: E402  (second stochastic layer)
from .cvae import CVAE  # noqa: E402  (registers "cvae")
from .completion import CompletionVAE  # noqa: E402  (registers "completion")
from .m2 import M2  # noqa: E402  (registers "m2")
from .m1m2 import StackedM2  # noqa: E402  (M2 on a trained VAE's codes: --features)
from .avb import AVB  # noqa: E402  (registers "avb")
from .aae import AAE  # noqa: E402  (registers "aae")
from .vaegan import VAEGAN  # noqa: E402  (registers "vaegan")

__all__ = ["CVAE", "CompletionVAE", "IWAE", "M2", "MODELS", "ModelConfig", "StackedM2", "TwoLayerIWAE", "TwoLayerVAE", "VAE", "build_model"]
