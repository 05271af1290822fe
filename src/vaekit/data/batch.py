"""The batch record: ``x`` plus whatever else a model reads (labels, conditions, and later lengths/masks).

Data, trainer, metrics and apps pass a :class:`Batch` along without looking inside; a model names the
fields it reads (``BaseModel.batch_fields``) and receives them as keyword arguments. A split of a
dataset is a batch of all its examples, so slicing, shuffling and moving to a device are written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch

#: The label of an example whose class is not known (scikit-learn's semi-supervised convention).
UNLABELLED = -1


@dataclass(repr=False)
class Batch:
    """Examples and what comes with them; every field but ``x`` may be None.

    x: float32 (N, *spec.shape).
    y: int64 (N,) class indices, ``UNLABELLED`` (-1) where the class is hidden or unknown.
    c: float32 (N, *spec.cond_shape): a condition for each example, either an attribute vector
       (N, C) or a conditioning input such as a second image (N, C', H', W').
    mask: float32 like x: 1 where a value is observed, 0 where it is missing or padding (sequences);
       a model that reads it leaves the masked values out of every loss.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    c: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        parts = [f"{f}={tuple(t.shape)}" for f, t in self.items()]
        return f"{type(self).__name__}({', '.join(parts)})"

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for the fields that are present, ``x`` first."""
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is not None:
                yield f.name, t

    def _map(self, fn: Any) -> "Batch":
        return type(self)(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                             for f in dataclasses.fields(self)})

    def __getitem__(self, index: slice) -> "Batch":
        """Rows ``index`` (a slice) of every field: views, no copies."""
        if not isinstance(index, slice):
            raise TypeError("a Batch is sliced with a slice; use select() for index tensors")
        return self._map(lambda t: t[index])

    def select(self, index: torch.Tensor) -> "Batch":
        """Rows ``index`` (an int64 tensor on the fields' device) of every field, in that order."""
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None, non_blocking: bool = False) -> "Batch":
        """Every field on ``device``; floating fields in ``dtype`` when given (labels stay int64)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
            return t.to(device=device, non_blocking=non_blocking)
        return self._map(move)

    def replace(self, **fields: Any) -> "Batch":
        return dataclasses.replace(self, **fields)

    @property
    def labelled(self) -> torch.Tensor | None:
        """Boolean (N,) mask of the examples whose label is known, or None without labels."""
        return None if self.y is None else self.y != UNLABELLED


def as_batch(data: Any) -> Batch:
    """A Batch as it is (or a split read from disk, ``data.stream.StreamSplit``, which slices into
    Batches), or a bare tensor / array of examples wrapped as ``Batch(x)``."""
    if isinstance(data, Batch) or getattr(data, "is_split", False) is True:
        return data
    return Batch(torch.as_tensor(data))


def model_inputs(model: Any, batch: Batch) -> dict[str, torch.Tensor | None]:
    """The keyword arguments ``model`` reads from ``batch`` (its ``batch_fields``), e.g. {"y": ...}."""
    return {f: getattr(batch, f) for f in getattr(model, "batch_fields", ())}


def labelled_first_order(labelled: torch.Tensor, batch_size: int, per_batch: int,
                         gen: torch.Generator) -> torch.Tensor:
    """An epoch's order in which each batch of ``batch_size`` holds ``per_batch`` labelled examples.

    The unlabelled examples are shuffled and each appears once; the labelled ones (usually far
    fewer) are shuffled and cycled to fill ``per_batch`` places in every batch, so a model that
    learns from the few labels (the classification term of M2) sees some in every step.
    Returns int64 indices; a batch is its labelled part first, then its unlabelled part.
    """
    lab = torch.nonzero(labelled).flatten()
    unl = torch.nonzero(~labelled).flatten()
    per_batch = max(1, min(per_batch, batch_size - 1))
    unl = unl[torch.randperm(len(unl), generator=gen)]
    step = batch_size - per_batch
    n_batches = max(1, -(-len(unl) // step))
    need = n_batches * per_batch
    rounds = -(-need // len(lab))
    cyc = torch.cat([lab[torch.randperm(len(lab), generator=gen)] for _ in range(rounds)])[:need]
    parts = []
    for j in range(n_batches):
        parts += [cyc[j * per_batch:(j + 1) * per_batch], unl[j * step:(j + 1) * step]]
    return torch.cat(parts)
