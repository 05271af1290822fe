"""vaekit: variational autoencoders end to end.

    import vaekit
    run = vaekit.train("digits", epochs=30, out="runs/digits")   # train, evaluate, figures
    model = vaekit.load("runs/digits")                           # rebuild from the run dir
    z_mu, z_logvar = model.encode(x); x_new = model.sample(16)
"""

__version__ = "0.1.0"

from .data.spec import DataSpec  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .models import MODELS, ModelConfig, build_model  # noqa: E402

__all__ = ["DataSpec", "MODELS", "ModelConfig", "Run", "VaekitError", "build_model", "load", "options", "train"]


def __getattr__(name: str):
    # Heavier pieces load on first use, so `import vaekit.models` stays light.
    if name in ("Run", "load", "options", "train"):
        from . import run

        return getattr(run, name)
    if name == "evaluate":
        from .metrics import evaluate

        return evaluate
    if name == "load_data":
        from .data.datasets import load_data

        return load_data
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
