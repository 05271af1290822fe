"""Loss terms in float32 under mixed precision (``torch.autocast``).

Under ``--precision bf16|fp16`` the networks run in a 16-bit type, but the terms of the bound are
sums of hundreds of per-value log-probabilities and log-sum-exps of importance weights spanning
hundreds of nats: bfloat16 keeps 8 bits of mantissa (an MNIST reconstruction term of ~100 nats
would be rounded to the nearest 0.5), fp16 overflows at 65504. ``float32_terms`` computes a term
in float32 whatever its inputs' type: 16-bit floating-point tensor arguments are cast up and
autocast is switched off inside (so no op in it runs in 16 bits again). Outside autocast it calls
the function as it is, so full-precision training is untouched (not one operation more).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_LOW = (torch.float16, torch.bfloat16)


def autocast_device() -> str | None:
    """The device type whose autocast is on in this thread ("cuda" or "cpu"), else None."""
    if torch.is_autocast_enabled("cuda"):
        return "cuda"
    if torch.is_autocast_enabled("cpu"):
        return "cpu"
    return None


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is a 16-bit float (itself otherwise: float32 and float64 stay)."""
    return t.float() if t.dtype in _LOW else t


def _up(v: Any) -> Any:
    return widen(v) if isinstance(v, torch.Tensor) else v


def float32_terms(fn: F) -> F:
    """Decorator: ``fn`` runs in float32 under autocast (16-bit tensor arguments cast up, autocast
    off inside); outside autocast, ``fn`` itself."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dev = autocast_device()
        if dev is None:
            return fn(*args, **kwargs)
        with torch.autocast(dev, enabled=False):
            return fn(*(_up(a) for a in args), **{k: _up(v) for k, v in kwargs.items()})

    wrapper.__float32_terms__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def wrap_methods(cls: type, names: tuple[str, ...]) -> None:
    """Apply ``float32_terms`` to the methods ``names`` that ``cls`` itself defines (for base
    classes whose every subclass's terms must be float32: likelihoods, priors)."""
    for name in names:
        fn = cls.__dict__.get(name)
        if callable(fn) and not getattr(fn, "__float32_terms__", False):
            setattr(cls, name, float32_terms(fn))
