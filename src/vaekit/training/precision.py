"""Mixed precision for the training step, in one place (``--precision fp32|bf16|fp16``).

Every step engine (``steps.py``) asks a :class:`Precision` for two things:

- ``autocast()``: the context its forward pass runs in. fp32: nothing (the step is exactly what
  it was). bf16/fp16: ``torch.autocast(device, dtype)``: matrix multiplies and convolutions run in
  16 bits from 16-bit copies of the weights, while the weights themselves, their gradients and
  Adam's moments stay float32 (the optimizer, the checkpoint and a distributed run's all-reduce
  see float32 only). The loss terms are float32 whatever the forward's type: likelihoods, priors,
  KL terms and log-sum-exps compute in float32 (``functional/amp.py``) and the encoders' Gaussian
  parameters come out in float32, so the noise, z and log q are full precision.
- ``scaler(player)``: for fp16, each player's dynamic loss scale (:class:`LossScaler`, torch's
  GradScaler algorithm): the loss is multiplied by the scale before backward so small gradients
  do not flush to zero in fp16; the guard (``steps.Guard``) unscales the gradients in the same
  fused pass that checks them for inf/NaN, before clipping; a step whose gradients overflowed is
  skipped and counted as a non-finite skip, and the scale halves; after 2000 good steps in a row
  it doubles. bf16 has fp32's exponent range and needs no scale.

Which engines run under it: autograd (one player or several) and the CUDA graph take autocast;
the hand-derived CPU step (``fastpath.py``) is float32 code and is not used under bf16/fp16
(autograd with autocast is; ``--matmul-precision medium`` is that step's own bf16 option). Under
fp16 the CUDA-graph step is not used either (the scale's growth and the skip decision would have
to live in the graph; the eager step is used).

fp16 needs a CUDA GPU (fp16 kernels and what the scaler is for); bf16 runs on CPUs too (oneDNN;
fast only with AMX / avx512_bf16 and matrices large enough; measured in ``bench/bench_precision.py``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch

from ..errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_ON_CPU = ("--precision fp16 needs a CUDA GPU (a gradient scaler and fp16 kernels); "
               "on CPUs use bf16 or fp32")


def check_precision(name: str, device: torch.device) -> None:
    """A UsageError (one line) for an unknown precision, or fp16 on a device other than CUDA."""
    if name not in PRECISIONS:
        raise UsageError(f"unknown --precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise UsageError(FP16_ON_CPU)


class LossScaler:
    """A dynamic loss scale: torch.amp.GradScaler's algorithm, defaults and fused kernels
    (``_amp_foreach_non_finite_check_and_unscale_``, ``_amp_update_scale_``), for vaekit's own
    Adam (GradScaler's ``unscale_``/``step`` need a ``torch.optim.Optimizer``).

    ``scale``: a one-element float32 tensor on the device. Its state is a few numbers
    (``state_dict``: JSON, in the checkpoint's trainer state)."""

    def __init__(self, device: torch.device | str, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.scale = torch.full((1,), float(init_scale), dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(1, dtype=torch.int32, device=device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` (float32) times the scale: what is back-propagated."""
        return loss * self.scale.reshape(())

    def inv_scale(self) -> torch.Tensor:
        """1 / scale (one element, float32), computed in double as GradScaler does."""
        return self.scale.double().reciprocal().float()

    def update(self, found_inf: torch.Tensor) -> None:
        """After a step: ``found_inf`` (one element, float32; nonzero when the step was skipped)
        halves the scale and restarts the count of good steps; else the count grows, and at
        ``growth_interval`` the scale doubles."""
        torch._amp_update_scale_(self.scale, self.growth_tracker, found_inf.to(torch.float32),
                                 self.growth_factor, self.backoff_factor, self.growth_interval)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state, with GradScaler's key names."""
        return {"scale": float(self.scale.item()), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": int(self.growth_tracker.item())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale.fill_(float(state["scale"]))
        self.growth_tracker.fill_(int(state.get("_growth_tracker", 0)))
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


class Precision:
    """The precision policy of one training run: ``name`` in fp32|bf16|fp16 on ``device``;
    ``players``: the names of the optimizers (each gets its own loss scale under fp16).

    Not checked here (``check_precision`` is, before anything is written): a test may run fp16
    on a CPU, where torch's autocast and the scaler's kernels work too (slowly)."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu", players: Iterable[str] = ("model",)) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = DTYPES[name]
        self.enabled = name != "fp32"
        self.scalers = {p: LossScaler(self.device) for p in players} if name == "fp16" else {}

    def autocast(self, *, cache: bool = True) -> contextlib.AbstractContextManager:
        """The forward pass's context: nothing under fp32, else ``torch.autocast``. ``cache=False``
        inside a CUDA-graph recording (autocast's cache of weight casts must not outlive it)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Autocast off (backward, the guard and the update of a several-player step, which run
        inside the model's ``train_step`` and so inside its forward's autocast)."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device.type, enabled=False):
            yield

    def scaler(self, player: str = "model") -> LossScaler | None:
        """``player``'s loss scale (fp16), else None."""
        return self.scalers.get(player)

    def backward(self, loss: torch.Tensor, player: str = "model") -> None:
        """``loss.backward()``, of the scaled loss under fp16."""
        s = self.scalers.get(player)
        (loss if s is None else s.scale_loss(loss)).backward()

    def state_dict(self) -> dict[str, Any]:
        """{player: scaler state} (empty unless fp16): JSON for the checkpoint."""
        return {p: s.state_dict() for p, s in self.scalers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scales saved by ``state_dict`` (players not saved keep a fresh scale, as
        does a run saved under another precision)."""
        for p, s in self.scalers.items():
            if isinstance(state.get(p), dict):
                s.load_state_dict(state[p])
