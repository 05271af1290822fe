"""One training step, several engines.

The trainer's loop asks a *step* to train on one batch and does not care how: by autograd
(``AutogradStep``), by the hand-derived CPU kernels (``HandDerivedStep``), recorded as a CUDA
graph (``GraphStep``), or by a model with several players, each with its own optimizer and its
own place in the update order (``PlayersStep``; by hand for the MLP adversarial autoencoder,
``HandDerivedPlayersStep``). ``choose_step`` picks one when training starts.

A step returns the batch's terms (a dict of 0-dim tensors: loss, elbo, recon, kl and the model's
``extra_terms``), ``None`` when the batch was skipped as non-finite, or ``QUEUED`` when the work
was queued on the device and is counted at ``end_epoch``. The non-finite guard is per player
(``Guard``): a player whose loss or gradients are not finite is not updated, and too many such
steps in a row stop training with the last checkpoint intact.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..data.batch import Batch, model_inputs
from ..errors import TrainingError
from .graphed import GraphedStep
from .optim import Adam
from .precision import LossScaler, Precision

QUEUED: dict[str, torch.Tensor] = {}  # the sentinel of a step queued on the device (identity matters)
TERMS = ("loss", "elbo", "recon", "kl")


class Guard:
    """The non-finite check of each player's update, and the count of skipped updates.

    ``runs[player]``: consecutive skipped updates of that player. Skipped updates are counted in
    the trainer's ``state``: "skipped_steps" (all players) and "skipped_by_player". ``max_run``
    in a row stop training (TrainingError)."""

    def __init__(self, state: dict[str, Any], max_run: int, grad_clip: float, device: torch.device) -> None:
        self.state, self.max_run, self.grad_clip = state, max_run, grad_clip
        self.runs: dict[str, int] = {}
        self.epoch = 0
        self._found_inf = torch.zeros(1, device=device)
        self._one = torch.ones(1, device=device)

    def finite(self, loss: torch.Tensor, params: list[torch.Tensor], grad_check: torch.Tensor | None = None,
               scaler: LossScaler | None = None) -> bool:
        """Whether ``loss`` and the gradients of ``params`` are finite (clipping them first when
        --grad-clip is set). ``grad_check``: the hand-derived step's sum of its gradients.
        ``scaler`` (fp16): the gradients are of the scaled loss; they are unscaled in place first
        (in the same fused pass as the check), and the scale is updated by the outcome."""
        if grad_check is not None and self.grad_clip == 0:
            return math.isfinite(float(loss + grad_check))
        grads = [p.grad for p in params if p.grad is not None]
        inv = self._one if scaler is None else scaler.inv_scale()
        if self.grad_clip > 0:
            if scaler is not None:  # the norm clipped is the true gradients'
                self._found_inf.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, inv)
            norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.grad_clip, foreach=True)
            ok = bool(torch.isfinite(loss) & torch.isfinite(norm))
        else:
            # One fused pass over all gradients (what torch's GradScaler uses), far cheaper than a norm.
            self._found_inf.zero_()
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, inv)
            ok = bool(torch.isfinite(loss) & (self._found_inf == 0))
        if scaler is not None:
            scaler.update(self._found_inf.fill_(0.0 if ok else 1.0))
        return ok

    def record(self, player: str, ok: bool, count: int = 1, longest_run: int = 0) -> None:
        """Count ``count`` updates of ``player`` (skipped unless ``ok``); stop after too many in a row."""
        if ok:
            self.runs[player] = 0
            return
        self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + count
        by = self.state.setdefault("skipped_by_player", {})
        by[player] = by.get(player, 0) + count
        run = longest_run or self.runs.get(player, 0) + count  # (queued steps report their longest run)
        self.runs[player] = run
        if run >= self.max_run:
            who = "" if player == "model" else f" of the {player}"
            raise TrainingError(
                f"{run} non-finite losses or gradients{who} in a row at epoch {self.epoch + 1}; stopped "
                "(the last good checkpoint is intact). Try a lower --lr, --grad-clip, or check the data")


def _terms(out: dict[str, torch.Tensor], extra: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: (out[k].detach() if k == "loss" else out[k]) for k in (*TERMS, *extra) if k in out}


class AutogradStep:
    """``model.loss`` on the batch, backward, then the guarded Adam update: any single-player model.
    ``precision`` (``precision.py``): the forward's autocast and, for fp16, the loss scale."""

    saves_inside_epoch = True
    #: set by ``distributed.ShardedStep``: averages the gradients and terms over the processes
    #: between the backward pass and the update (None: one process)
    sync: Any = None

    def __init__(self, model: torch.nn.Module, opt: Adam, guard: Guard, precision: Precision | None = None) -> None:
        self.model, self.opt, self.guard = model, opt, guard
        self.prec = precision or Precision()
        self.extra = tuple(getattr(model, "extra_terms", ()))

    def begin_epoch(self, lr: float, example: Batch) -> None:
        self.opt.lr = lr

    def _forward_backward(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor]:
        with self.prec.autocast():
            out = self.model.loss(b.x, kl_weight=kl_weight, **model_inputs(self.model, b))
        self.opt.zero_grad()  # in place: reused gradient buffers cost no page faults
        self.prec.backward(out["loss"])  # (of the scaled loss under fp16)
        return out

    def __call__(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor] | None:
        out = self._forward_backward(b, kl_weight)
        if self.sync is not None:
            out = self.sync.reduce(out, self.opt.params)
        ok = self.guard.finite(out["loss"], self.opt.params, out.get("grad_check"), self.prec.scaler())
        self.guard.record("model", ok)
        if not ok:
            return None
        self.opt.step()
        return _terms(out, self.extra)

    def end_epoch(self) -> dict[str, Any] | None:
        return None


class HandDerivedStep(AutogradStep):
    """The same update with the hand-derived forward and backward of ``fastpath.FastStep``."""

    def __init__(self, model: torch.nn.Module, opt: Adam, guard: Guard, fast: Any) -> None:
        super().__init__(model, opt, guard)  # float32 only: not chosen under --precision bf16/fp16
        self.fast = fast

    def _forward_backward(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor]:
        return self.fast.step(b.x, kl_weight=kl_weight, **model_inputs(self.model, b))  # sets every p.grad


class GraphStep:
    """The whole autograd step recorded as a CUDA graph (``graphed.GraphedStep``): full batches
    are queued on the device and counted at the end of the epoch; a last, smaller batch runs
    eagerly. No checkpoints inside an epoch (nothing is read back until its end)."""

    saves_inside_epoch = False

    def __init__(self, model: torch.nn.Module, opt: Adam, guard: Guard, batch_size: int,
                 make: Callable[[torch.Tensor], GraphedStep], precision: Precision | None = None) -> None:
        self.eager = AutogradStep(model, opt, guard, precision)
        self.opt, self.guard, self.bs, self.make = opt, guard, batch_size, make
        self.graph: GraphedStep | None = None

    def begin_epoch(self, lr: float, example: Batch) -> None:
        self.opt.lr = lr
        if self.graph is None and len(example) == self.bs:  # recorded on the first full batch
            self.graph = self.make(example.x)
        if self.graph is not None:
            self.graph.set_lr(lr)

    def __call__(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor] | None:
        if self.graph is not None and len(b) == self.bs:
            self.graph.step(b.x, kl_weight)
            return QUEUED
        return self.eager(b, kl_weight)

    def end_epoch(self) -> dict[str, Any] | None:
        """The queued steps: {"means", "good", "skipped", "longest_skipped_run"}."""
        if self.graph is None:
            return None
        got = self.graph.collect()
        self.guard.record("model", got["skipped"] == 0, got["skipped"], got["longest_skipped_run"])
        return got


class PlayersStep:
    """A model with several players: ``model.players()`` names each player's parameters (and
    optionally its learning-rate scale and Adam betas), each gets its own Adam, and the model's
    ``train_step(x, update=..., kl_weight=..., **fields)`` runs the batch in its own order,
    calling ``update(player, loss)`` for each update it makes (it may skip some, as the VAE-GAN's
    equilibrium rule does). ``update`` back-propagates ``loss`` into that player's parameters
    only, checks them, and steps its optimizer; it returns whether the update was applied.
    ``update.mean(t)`` is the whole batch's mean of a batch mean ``t``: a model that decides
    from the batch's values which updates to make reads them through it, so that all processes
    of a distributed run decide alike (in one process it is ``t`` itself)."""

    saves_inside_epoch = True
    sync: Any = None  # as AutogradStep.sync: each update's gradients, and the terms, over the processes

    def __init__(self, model: torch.nn.Module, opts: dict[str, Adam], guard: Guard, precision: Precision | None = None) -> None:
        self.model, self.opts, self.guard = model, opts, guard
        self.prec = precision or Precision()
        self.scale = {name: float(spec.get("lr_scale", 1.0)) for name, spec in model.players().items()}
        self.extra = tuple(getattr(model, "extra_terms", ()))
        self._all_ok = True

        def update(player: str, loss: torch.Tensor, *, retain_graph: bool = False) -> bool:
            return self.update(player, loss, retain_graph=retain_graph)

        update.mean = lambda t: t if self.sync is None else self.sync.mean(t)  # type: ignore[attr-defined]
        self._update = update

    def begin_epoch(self, lr: float, example: Batch) -> None:
        for name, opt in self.opts.items():
            opt.lr = lr * self.scale[name]

    def update(self, player: str, loss: torch.Tensor, *, retain_graph: bool = False) -> bool:
        with self.prec.paused():  # (called inside train_step, under its forward's autocast)
            return self._update_player(player, loss, retain_graph)

    def _update_player(self, player: str, loss: torch.Tensor, retain_graph: bool) -> bool:
        opt, scaler = self.opts[player], self.prec.scaler(player)
        opt.zero_grad(set_to_none=True)
        # gradients of this player's parameters only: the others' .grad stay untouched
        scaled = loss if scaler is None else scaler.scale_loss(loss)
        grads = torch.autograd.grad(scaled, opt.params, retain_graph=retain_graph, allow_unused=True)
        for p, g in zip(opt.params, grads):
            p.grad = g
        return self._check_and_step(player, loss, scaler=scaler)

    def _check_and_step(self, player: str, loss: torch.Tensor, grad_check: torch.Tensor | None = None,
                        scaler: LossScaler | None = None) -> bool:
        """The update of ``player`` from the gradients in its parameters' .grad: averaged over the
        processes (distributed), checked, and applied when finite."""
        opt = self.opts[player]
        loss = loss.detach()
        if self.sync is not None:  # (the hand-derived step's grad_check is of this process's gradients only)
            loss, grad_check = self.sync.reduce({"loss": loss}, opt.params)["loss"], None
        ok = self.guard.finite(loss, opt.params, grad_check, scaler=scaler)
        self.guard.record(player, ok)
        if ok:
            opt.step()
        self._all_ok &= ok
        return ok

    def __call__(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor] | None:
        self._all_ok = True
        # (no cache of the weights' 16-bit copies: a player's update changes weights that later
        # forward passes of the same batch must see)
        with self.prec.autocast(cache=False):
            out = self.model.train_step(b.x, update=self._update, kl_weight=kl_weight, **model_inputs(self.model, b))
        if self.sync is not None:
            out = self.sync.terms(out)
        return _terms(out, self.extra) if self._all_ok else None

    def end_epoch(self) -> dict[str, Any] | None:
        return None


class HandDerivedPlayersStep(PlayersStep):
    """The same updates with a hand-derived forward and backward (``fastpath.FastAAEStep``,
    ``FastVAEGANStep``): the fast step writes each player's gradients and calls ``apply`` (here
    ``_check_and_step``) to check and step it, in the model's order; no autograd graph is built."""

    def __init__(self, model: torch.nn.Module, opts: dict[str, Adam], guard: Guard, fast: Any) -> None:
        super().__init__(model, opts, guard)  # float32 only: not chosen under --precision bf16/fp16
        self.fast = fast

    def __call__(self, b: Batch, kl_weight: float) -> dict[str, torch.Tensor] | None:
        self._all_ok = True
        out = self.fast.step(b.x, apply=self._check_and_step, kl_weight=kl_weight, mean=self._update.mean)
        if self.sync is not None:
            out = self.sync.terms(out)
        return _terms(out, self.extra) if self._all_ok else None


def player_optimizers(model: torch.nn.Module, lr: float, weight_decay: float) -> dict[str, Adam]:
    """One Adam per player of ``model`` (``{"model": Adam(all parameters)}`` for a one-player
    model). Every trainable parameter must belong to exactly one player, except that a player
    declared ``"shared": True`` updates parameters of other players with an optimizer of its own
    (the adversarial autoencoder's encoder is trained in two phases: with the decoder on the
    reconstruction, and alone as the generator against the discriminator)."""
    players = model.players() if hasattr(model, "players") else {}
    if not players:
        return {"model": Adam(model.parameters(), lr=lr, weight_decay=weight_decay)}
    seen: set[int] = set()
    opts = {}
    for name, spec in players.items():
        params = [p for p in spec["params"] if p.requires_grad]
        if not spec.get("shared"):
            if any(id(p) in seen for p in params):
                raise ValueError(f"a parameter of player {name!r} belongs to another player too")
            seen.update(id(p) for p in params)
        opts[name] = Adam(params, lr=lr * float(spec.get("lr_scale", 1.0)), betas=tuple(spec.get("betas", (0.9, 0.999))),
                          weight_decay=weight_decay)
    for name, spec in players.items():
        if spec.get("shared") and any(id(p) not in seen for p in opts[name].params):
            raise ValueError(f"shared player {name!r} has parameters that no other player owns")
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left:
        raise ValueError(f"parameters {left[:3]} belong to no player of {type(model).__name__}")
    return opts
