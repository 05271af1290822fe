"""One training step recorded as a CUDA graph and replayed, for small models on a GPU.

A step of the models vaekit trains is hundreds of small kernels (the two-layer IWAE: ~375
operators for loss, backward and Adam), each a few microseconds of GPU work, so launched one by
one from Python the GPU waits on the CPU most of the time. Recorded once as a CUDA graph, the
whole step (forward, backward, the non-finite check and the fused Adam update) is replayed with
one launch, and the GPU runs back to back.

What changes between replays lives in tensors the graph reads: the batch (copied into a fixed
buffer), the KL weight and the learning rate. Nothing in the step waits for the device: a step
with a non-finite loss or gradient is skipped on the device (Adam's ``found_inf``), and the
loss terms, the number of skipped steps and the longest run of them are summed on the device
and read once per epoch by ``collect``.

Without ``capture`` (any device) the same step runs eagerly, which is how it is tested on CPUs.
Under ``--precision bf16`` the forward is recorded under autocast (``precision.py``); fp16 is not
recorded (its loss scale would have to be updated inside the graph): the trainer steps eagerly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .optim import Adam
from .precision import Precision

TERMS = ("loss", "elbo", "recon", "kl")


class GraphedStep:
    """``step(x, kl_weight)`` trains ``model`` on one batch shaped like ``example``.

    ``example``: a batch (B, *shape) on the training device; every batch stepped must have its
    shape and dtype. The model and optimiser state are left exactly as they were by the
    recording (the warm-up steps it needs are undone).
    """

    def __init__(self, model: torch.nn.Module, opt: Adam, example: torch.Tensor, *, capture: bool = True,
                 warmup: int = 3, precision: Precision | None = None) -> None:
        if not opt.fused:
            raise ValueError("GraphedStep needs the fused Adam update (parameters in float32/64 on CPU or CUDA)")
        # bf16: the forward is recorded under autocast (its casts become kernels of the graph);
        # fp16's loss scale is not recorded (the trainer uses the eager step under fp16)
        self.prec = precision or Precision()
        if self.prec.scalers:
            raise ValueError("GraphedStep does not record fp16's loss scaling; use the eager step")
        dev = example.device
        self.model, self.opt = model, opt
        self.x = example.detach().clone()
        self.kl_weight = torch.ones((), device=dev)
        self._kl_value = 1.0
        self.lr = torch.full((), float(opt.lr), device=dev, dtype=torch.float32)
        self.found_inf = torch.zeros(1, device=dev)
        self._one = torch.ones(1, device=dev)
        # per-epoch sums on the device: loss terms of the good steps, good and skipped steps,
        # the current and the longest run of consecutive skipped steps
        self.sums = torch.zeros(len(TERMS), device=dev, dtype=torch.float64)
        self.counts = torch.zeros(4, device=dev, dtype=torch.float64)
        self.graph: Any = None
        if capture:
            self._capture(warmup)

    # -- the step ---------------------------------------------------------------------------------
    def _body(self) -> None:
        with self.prec.autocast(cache=False):  # (autocast's cache must not outlive a recording)
            out = self.model.loss(self.x, kl_weight=self.kl_weight)
        loss = out["loss"]
        self.opt.zero_grad()  # in place; before the recording the gradients are None instead
        loss.backward()
        grads = [p.grad for p in self.opt.params if p.grad is not None]
        found = self.found_inf
        found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)
        found.copy_(torch.maximum(found, (~torch.isfinite(loss.detach())).to(found.dtype).reshape(1)))
        self.opt.step(lr=self.lr, found_inf=found)
        bad = found.reshape(()).double()
        terms = torch.stack([loss.detach(), out["elbo"], out["recon"], out["kl"]]).double()
        self.sums.add_(torch.where(bad > 0, torch.zeros_like(terms), terms))  # NaN * 0 would be NaN
        run = self.counts[2].mul(bad).add(bad)  # consecutive skipped steps: 0 after a good one
        self.counts.add_(torch.stack([1.0 - bad, bad, run - self.counts[2], torch.zeros_like(bad)]))
        torch.maximum(self.counts[3], self.counts[2], out=self.counts[3])

    def _state(self) -> list[torch.Tensor]:
        o = self.opt
        return [*o.params, *self.model.buffers(), *o.exp_avg, *o.exp_avg_sq, *o.steps]

    def _capture(self, warmup: int) -> None:
        """Warm up on a side stream (CUDA requires it), record, then undo the warm-up's updates."""
        with torch.cuda.device(self.x.device):  # the model's GPU, whichever is current
            self._record(warmup)

    def _record(self, warmup: int) -> None:
        saved = [t.detach().clone() for t in self._state()]
        try:
            side = torch.cuda.Stream(device=self.x.device)
            side.wait_stream(torch.cuda.current_stream(self.x.device))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):
                    self._body()
            torch.cuda.current_stream(self.x.device).wait_stream(side)
            self.opt.zero_grad(set_to_none=True)  # the recorded backward allocates them in the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
        except BaseException:
            try:  # best effort: after a failed recording the device may refuse any further work
                self._restore(saved)
            except Exception:
                pass
            raise
        self._restore(saved)
        self.graph = graph

    def _restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t, v in zip(self._state(), saved):
                t.copy_(v)
        self.reset()

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(float(lr))

    def step(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """One training step on ``x`` (queued on the device; nothing is read back)."""
        self.x.copy_(x)
        if kl_weight != self._kl_value:
            self.kl_weight.fill_(float(kl_weight))
            self._kl_value = kl_weight
        if self.graph is not None:
            with torch.cuda.device(self.x.device):
                self.graph.replay()
        else:
            self._body()

    # -- bookkeeping ----------------------------------------------------------------------------------
    def reset(self) -> None:
        self.sums.zero_()
        self.counts.zero_()

    def collect(self) -> dict[str, Any]:
        """The sums since the last ``collect`` (waits for the device once), then resets them:
        "means" (mean loss, elbo, recon, kl over the good steps; NaN with none), "good",
        "skipped" and "longest_skipped_run" (step counts)."""
        sums, counts = self.sums.tolist(), [int(round(c)) for c in self.counts.tolist()]
        self.reset()
        good = counts[0]
        means = [s / good if good else math.nan for s in sums]
        return {"means": dict(zip(TERMS, means)), "good": good, "skipped": counts[1], "longest_skipped_run": counts[3]}
