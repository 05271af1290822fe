"""CLI verbs beyond train/evaluate. Each module defines ``register(sub)`` which adds one or more
subcommands with ``set_defaults(func=handler)``; ``handler(args) -> int`` calls the public API.
Add a module's name to ``MODULES`` to expose its verbs."""

from __future__ import annotations

import importlib

MODULES: list[str] = ["generate", "latent", "report", "impute", "denoise", "detect", "complete", "classify", "feature_net", "serve", "export", "prepare"]


def register_all(sub) -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
