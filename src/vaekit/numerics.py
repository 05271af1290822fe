"""Process-wide floating-point settings for training and evaluation, set and restored together.

- The float32 matmul precision (``torch.set_float32_matmul_precision``).
- Flushing subnormal (denormal) floats to zero on the CPU. Importance weights and their gradients
  span hundreds of orders of magnitude; the many that fall below 1.2e-38 run through the CPU's
  slow microcoded path: an fp32 IWAE training step was 1.07-1.8x slower than the same step with
  them flushed, depending on the weights and data (``BENCHMARKS.md``). Flushing changes values
  by less than 1.2e-38.

The mode is a per-thread CPU setting, and a thread starts with its creator's: the intra-op worker
threads (OpenMP) keep the mode the main thread had when the first parallel operation started
them. ``float_mode`` sets the calling thread only, so a program flushes in every thread only when
it sets the mode before its first parallel operation: ``vaekit``'s command line does
(``flush_denormals_in_all_threads``, called by ``cli.program``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def denormals_flushed(n: int = 1) -> bool:
    """True when the CPU currently flushes subnormal float32 results to zero: in this thread, or
    with ``n`` large enough that the product is split among the intra-op threads, in all of them."""
    return bool(((torch.full((n,), 1e-30) * 1e-9) == 0).all())  # 1e-39 is subnormal in float32


def flush_denormals_in_all_threads() -> bool:
    """Flush subnormals to zero in this thread and in the intra-op worker threads started after
    this call (they inherit the mode); for a program's first lines, before any parallel work.

    Returns whether every thread now flushes: a product of subnormal size over a tensor large
    enough to be split among the threads must come out all zeros. False where the CPU has no such
    mode, or where the workers were started before the call (they keep the mode they had).
    Measured (2 threads, 128 x 784 decoder logits of -20 to -120, the Bernoulli likelihood and its
    gradient): 0.27 ms per step with the workers not flushing, 0.14 ms with them flushing."""
    return torch.set_flush_denormal(True) and denormals_flushed(1 << 20)


@contextlib.contextmanager
def float_mode(matmul_precision: str | None = None, *, flush_denormals: bool = True) -> Iterator[None]:
    """Within the block: ``matmul_precision`` (None keeps the current one) and, if asked and the
    CPU supports it, subnormals flushed to zero. Both are restored afterwards, also on errors."""
    old_precision = torch.get_float32_matmul_precision()
    old_flush = denormals_flushed()
    try:
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        if flush_denormals and not old_flush:
            torch.set_flush_denormal(True)  # False where the CPU lacks the mode: then a no-op
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        if denormals_flushed() != old_flush:
            torch.set_flush_denormal(old_flush)


def fork_rng(device: torch.device | str):
    """``torch.random.fork_rng`` for work on ``device``: the CPU generator is always saved and
    restored; for CUDA work every GPU's generator too, since ``torch.manual_seed`` reseeds them
    all, and seeding inside the block would otherwise change the caller's CUDA random streams.
    CPU-only work leaves CUDA untouched (not even initialised)."""
    cuda = torch.device(device).type == "cuda"
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else [])
