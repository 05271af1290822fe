"""Data-parallel training over several processes (torchrun), in one place.

A run launched by ``torchrun`` (or ``vaekit train --nproc N``, which launches the same) trains one
model in every process: gloo on CPUs, NCCL on GPUs. The trainer's loop is the one-process loop;
only the step is wrapped (:class:`ShardedStep`):

- Every process draws the same epoch order from the shared seed, slices each global batch
  (``--batch-size``) the same way, and trains on its contiguous part of it (``World.part``).
- Noise is drawn for the whole global batch from the random generator all processes share (it is
  seeded alike and every process makes the same draws), and each process keeps its rows
  (:class:`GlobalBatchNoise`). A process's examples therefore get exactly the noise the one-process
  run gives them, and a run trains the same model, to rounding, on any number of processes.
- After the backward pass, the gradients (and the step's loss terms) of all processes are summed in
  one all-reduce over a flat buffer, each weighted by its share of the batch (:class:`GradSync`):
  the global batch's mean gradient. The same reduction serves the autograd step, the hand-derived
  CPU step (its gradients are plain tensors too) and each update of a several-player model. The
  CUDA-graph step is not used under several processes (a collective cannot be replayed in a graph
  recorded on one process's stream without NCCL graph support; the eager step is used instead).
- Every process then holds the same gradients, so the non-finite guard, Adam and the weight
  average take the same decisions and keep the same weights everywhere; validation is sharded and
  its means are reduced; the decisions to checkpoint, stop or stop early are agreed.
- Only rank 0 writes (the run directory, checkpoints, metrics, figures, report).

In one process (``World.size == 1``) nothing here runs: training is exactly what it was.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from ..errors import TrainingError, UsageError, VaekitError
from .interrupt import stopping_anyway

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size`` (``local_rank``
    of ``local_size`` on this machine). ``World()`` is the one-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        """Whether there are several processes (and a process group)."""
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0)."""
        return self.rank == 0

    def part(self, n: int) -> tuple[int, int]:
        """This process's rows [lo, hi) of a batch of ``n``: contiguous, sizes differing by at most one."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    # -- collectives (no-ops in one process) --------------------------------------------------------
    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all processes, in place."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every process when ``flag`` is true on any."""
        if not self.active:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def from_rank0(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Rank 0's ``flag`` on every process (rank 0 decides)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.broadcast(t, 0)
        return bool(t.item() > 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers in every process (they are equal already when every
        process seeded alike; this makes it so whatever the model's initialisation did)."""
        if self.active:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = World()


def current() -> World:
    """The world of the process group already set up in this process (one process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", 0))
    return World(dist.get_rank(), dist.get_world_size(), local, int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                 dist.get_backend())


def launched() -> bool:
    """Whether this process was started by torchrun (or ``vaekit train --nproc``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def usable_devices(device: str) -> int:
    """How many processes one machine may run for ``device`` ("cpu", "cuda", "auto"): its GPUs on
    CUDA, else its CPU cores (those this process may use)."""
    if _wants_cuda(device):
        return torch.cuda.device_count()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def pick_backend(device: str, backend: str) -> str:
    """gloo for CPUs, NCCL for GPUs; an impossible request is a UsageError."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown --dist-backend {backend!r}; valid: {', '.join(BACKENDS)}")
    cuda = _wants_cuda(device)
    if backend == "nccl" and not cuda:
        why = "no CUDA GPU is available" if not torch.cuda.is_available() else "--device cpu was asked for"
        raise UsageError(f"--dist-backend nccl needs GPUs, but {why}; use --dist-backend gloo (or auto) to train on CPUs")
    if backend == "nccl" and not dist.is_nccl_available():
        raise UsageError("--dist-backend nccl: this PyTorch has no NCCL; use --dist-backend gloo")
    if backend == "auto":
        return "nccl" if cuda and dist.is_nccl_available() else "gloo"
    return backend


def check_batch(batch_size: int, world: int) -> None:
    """The global batch must split evenly over the processes."""
    if world > 1 and batch_size % world:
        raise UsageError(f"--batch-size {batch_size} does not split evenly over {world} processes; "
                         f"use a multiple of {world} (it is the global batch, shared by all processes)")


def setup(device: str, backend: str, batch_size: int) -> World:
    """Join the process group of a run launched by torchrun (on CUDA, this process uses GPU
    ``LOCAL_RANK``). Without torchrun's environment (one process): ``SINGLE``, nothing set up."""
    if not launched():
        if backend == "nccl":
            pick_backend(device, backend)  # the same one line as under torchrun when there is no GPU
        return SINGLE
    backend = pick_backend(device, backend)
    size = int(os.environ["WORLD_SIZE"])
    check_batch(batch_size, size)
    local, local_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if _wants_cuda(device):
        if local >= torch.cuda.device_count():
            raise UsageError(f"{local_size} processes on this machine but only {torch.cuda.device_count()} GPU(s); "
                             f"start at most {torch.cuda.device_count()} per machine (--nproc_per_node), or use --device cpu")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # a dead peer shows up as an error in the next collective; the timeout bounds a silent hang
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return World(dist.get_rank(), dist.get_world_size(), local, local_size, backend)


def shutdown() -> None:
    """Leave the process group (at the end of a run that set it up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PeerLost(TrainingError):
    """Another process of the run stopped, so a collective failed in this one."""


#: words of the errors torch.distributed raises in a collective whose peer has gone
_PEER_LOST = ("connection closed", "connection reset", "broken pipe", "gloo", "nccl", "timed out", "socket")


def raise_if_peer_lost(world: World, e: BaseException) -> None:
    """A collective that failed because another process of the run stopped (killed, or failed
    with its own message) becomes one TrainingError line; anything else is left to the caller."""
    if not world.active or isinstance(e, (VaekitError, KeyboardInterrupt)):
        return
    lost = isinstance(e, getattr(dist, "DistBackendError", ())) or (
        isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _PEER_LOST))
    if lost:
        stopping_anyway()  # the agent's SIGTERM, arriving as this unwinds, must not turn it into "interrupted"
        raise PeerLost(f"process {world.rank} of {world.size}: another process of this run stopped, so this one "
                            "stops too; the last checkpoint (rank 0 writes it whole or not at all) is intact: continue "
                            "with the same command and --resume") from None


# -- noise: each process keeps its rows of the global batch's draws ------------------------------------
def _size_args(args: tuple) -> tuple[list[int], tuple]:
    """(size, the remaining positional args) of ``torch.randn(*size)`` / ``torch.randn(size)``."""
    if args and isinstance(args[0], (tuple, list, torch.Size)):
        return list(args[0]), args[1:]
    n = 0
    while n < len(args) and isinstance(args[n], int):
        n += 1
    return list(args[:n]), args[n:]


class GlobalBatchNoise(TorchFunctionMode):
    """Inside a training step on rows [lo, hi) of a global batch of ``n``: each random draw of a
    shape with a dimension of ``hi - lo`` (the first such) is drawn with ``n`` there, from the
    generator every process shares, and this process keeps its slice. Draws without such a
    dimension are drawn as they are: the same on every process, as one process draws them once for
    the whole batch. Draws with an explicit ``generator=`` are left alone."""

    def __init__(self, lo: int, hi: int, n: int) -> None:
        super().__init__()
        self.lo, self.m, self.n = lo, hi - lo, n

    def _dim(self, shape: list[int] | torch.Size) -> int | None:
        for d, s in enumerate(shape):
            if s == self.m:
                return d
        return None

    def _grow(self, shape: list[int] | torch.Size) -> tuple[int | None, list[int]]:
        d = self._dim(shape)
        big = list(shape)
        if d is not None:
            big[d] = self.n
        return d, big

    def _keep(self, t: torch.Tensor, d: int | None) -> torch.Tensor:
        return t if d is None else t.narrow(d, self.lo, self.m).contiguous()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if kwargs.get("generator") is not None or self.m == self.n:
            return func(*args, **kwargs)
        if func in (torch.randn, torch.rand):
            size, rest = _size_args(args)
            d, big = self._grow(size)
            return self._keep(func(big, *rest, **kwargs), d)
        if func is torch.randint:
            if "size" in kwargs:  # randint(high, size) / randint(low, high, size)
                kwargs = dict(kwargs)
                bounds, size = list(args), kwargs.pop("size")
            else:
                bounds, size = list(args[:-1]), args[-1]
            d, big = self._grow(list(size))
            return self._keep(func(*bounds, big, **kwargs), d)
        if func in (torch.randn_like, torch.rand_like):
            like = args[0]
            d, big = self._grow(like.shape)
            if d is None:
                return func(*args, **kwargs)
            opts = {"dtype": kwargs.get("dtype") or like.dtype, "device": kwargs.get("device") or like.device}
            draw = torch.randn if func is torch.randn_like else torch.rand
            return self._keep(draw(big, **opts), d)
        if func in (torch.Tensor.normal_, torch.Tensor.uniform_):
            t = args[0]
            d, big = self._grow(t.shape)
            if d is None:
                return func(*args, **kwargs)
            full = func(torch.empty(big, dtype=t.dtype, device=t.device), *args[1:], **kwargs)
            with torch.no_grad():
                t.copy_(full.narrow(d, self.lo, self.m))
            return t
        return func(*args, **kwargs)


# -- gradients: one all-reduce of the batch's weighted gradients and loss terms -------------------------
class GradSync:
    """Turns this process's gradients and loss terms (means over its rows) into the global batch's,
    on every process: each is weighted by ``share`` (this process's rows / the global batch) and
    summed over the processes in one all-reduce of a flat buffer. A parameter keeps ``grad=None``
    only where no process gave it a gradient (as Adam then leaves it alone in one process too)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.share = 1.0 / world.size

    def reduce(self, terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reduce the ``.grad`` of ``params`` in place; return ``terms`` with each 0-dim float
        tensor replaced by its global mean ("grad_check", the hand-derived step's, recomputed)."""
        names = [k for k, v in terms.items() if k != "grad_check" and isinstance(v, torch.Tensor)
                 and v.dim() == 0 and v.is_floating_point()]
        device = params[0].device if params else next(iter(terms.values())).device
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype)
                 for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params], device=device)
        vals = [terms[k].detach().reshape(1).to(device, torch.float32) for k in names]
        flat = torch.cat([*grads, *vals]).mul_(self.share)
        flat = torch.cat([flat, has])  # flags: not weighted
        self.world.all_sum(flat)
        n = sum(g.numel() for g in grads)
        views = flat[:n].split([p.numel() for p in params])
        for p, v, got in zip(params, views, flat[n + len(names):].tolist()):
            if got == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = v.view_as(p).clone()
            else:
                p.grad.copy_(v.view_as(p))
        out = dict(terms)
        for k, v in zip(names, flat[n:n + len(names)]):
            out[k] = v.to(terms[k].dtype)
        if "grad_check" in terms:
            out["grad_check"] = flat[:n].sum()
        return out

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The global batch's mean of a per-process batch mean ``t`` (0-dim), on every process."""
        flat = t.detach().reshape(1).to(torch.float32).mul(self.share)
        return self.world.all_sum(flat).reshape(()).to(t.dtype)

    def terms(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Only the loss terms, as in :meth:`reduce` (a several-player step's, after its updates)."""
        return self.reduce(terms, [])


class ShardedStep:
    """A step engine (``steps.py``) run on this process's part of each global batch: noise as in
    :class:`GlobalBatchNoise`, gradients and terms reduced by the engine through its ``sync``
    (:class:`GradSync`). It returns the global batch's terms, the same on every process.

    A last batch of an epoch smaller than the number of processes is skipped (every process needs
    at least one example); with ``--batch-size`` a multiple of the processes this is the only
    difference from one process, and only when the training set leaves such a remainder."""

    def __init__(self, inner: Any, world: World) -> None:
        self.inner, self.world = inner, world
        self.sync = inner.sync = GradSync(world)
        self.saves_inside_epoch = inner.saves_inside_epoch

    def begin_epoch(self, lr: float, example: Any) -> None:
        self.inner.begin_epoch(lr, example)

    def __call__(self, b: Any, kl_weight: float) -> Any:
        n = len(b)
        if n < self.world.size:
            return None
        lo, hi = self.world.part(n)
        self.sync.share = (hi - lo) / n
        with GlobalBatchNoise(lo, hi, n):
            return self.inner(b[lo:hi], kl_weight)

    def end_epoch(self) -> Any:
        return self.inner.end_epoch()


@contextlib.contextmanager
def session(device: str, backend: str, batch_size: int) -> Iterator[World]:
    """``setup`` for the duration of a run; the process group is left at the end if this set it up."""
    own = launched() and not (dist.is_available() and dist.is_initialized())
    try:
        yield setup(device, backend, batch_size)
    finally:
        if own:
            shutdown()
