"""What a model needs to know about its data: shape, value kind and number of classes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("binary", "8bit", "unit", "continuous", "tokens")


@dataclass(frozen=True)
class DataSpec:
    """Shape and kind of one example.

    shape: per-example shape; images are (C, H, W), tables and flat vectors (D,).
    kind: "binary" (values in {0, 1}), "8bit" (values k/255 in [0, 1], e.g. images), "unit"
        (real values in [0, 1] that are not 8-bit, e.g. sklearn digits scaled by 1/16), or
        "continuous" (any real values, e.g. standardised table columns).
    num_classes: number of label classes when labels exist, else None.
    vocab_size: for "tokens" (sentences, shape (T, 1) of token ids): the vocabulary's size.
    cond_shape: per-example shape of the condition ``c`` (an attribute vector (C,) or a conditioning
        input such as an image (C, H, W)) when the data carry one, else None.
    """

    shape: tuple[int, ...]
    kind: str
    num_classes: int | None = None
    cond_shape: tuple[int, ...] | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.cond_shape is not None:
            object.__setattr__(self, "cond_shape", tuple(int(s) for s in self.cond_shape))
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.shape or any(s <= 0 for s in self.shape):
            raise ValueError(f"DataSpec.shape must be non-empty and positive, got {self.shape}")

    @property
    def dim(self) -> int:
        """Number of scalar values per example (for bits/dim)."""
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def is_sequence(self) -> bool:
        """Sequences: (T, D), T steps of D values (windows of a series, or padded sequences)."""
        return len(self.shape) == 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["cond_shape"] = None if self.cond_shape is None else list(self.cond_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        cond = d.get("cond_shape")
        return cls(shape=tuple(d["shape"]), kind=d["kind"], num_classes=d.get("num_classes"),
                   cond_shape=None if cond is None else tuple(cond), vocab_size=d.get("vocab_size"))
