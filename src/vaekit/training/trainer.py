"""The training loop: plain and readable, fast on CPU, safe to interrupt and resume.

Data lives in one tensor; each epoch shuffles it with one gather and batches are slices.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..config import TrainConfig
from ..data.batch import Batch, labelled_first_order, model_inputs
from ..data.datasets import Data
from ..errors import TrainingError, UsageError
from ..functional.schedules import SCHEDULES, kl_weight_at
from ..io import save_tensors, write_text
from ..metrics import loss_terms
from ..numerics import float_mode
from .average import WeightAverage
from .checkpoint import resume_checkpoint, save_checkpoint
from .distributed import BACKENDS, ShardedStep, World, current as current_world
from .interrupt import StopRequest, stop_on_signals
from .fastpath import FastStep, players_step, supports
from .graphed import GraphedStep
from .memory import channels_last, keep_freed_memory
from .precision import Precision, check_precision
from .steps import (QUEUED, AutogradStep, GraphStep, Guard, HandDerivedPlayersStep, HandDerivedStep, PlayersStep,
                    player_optimizers)

LR_SCHEDULES = ("none", "cosine", "exponential")
PRECISIONS = ("highest", "high", "medium")


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when available, else CPU; an unavailable CUDA request is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def check_config(cfg: TrainConfig) -> None:
    """Reject impossible settings before anything is written."""
    for flag, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise UsageError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"unknown lr schedule {cfg.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if cfg.kl_schedule not in SCHEDULES:
        raise UsageError(f"unknown KL schedule {cfg.kl_schedule!r}; valid: {', '.join(SCHEDULES)}")
    if cfg.matmul_precision not in PRECISIONS:
        raise UsageError(f"unknown matmul precision {cfg.matmul_precision!r}; valid: {', '.join(PRECISIONS)}")
    if not 0.0 <= cfg.weight_average < 1.0:
        raise UsageError(f"--weight-average must be in [0, 1) (0: off), got {cfg.weight_average}")
    if not cfg.checkpoint_every >= 0:
        raise UsageError(f"--checkpoint-every must be >= 0 seconds (0: at epoch ends only), got {cfg.checkpoint_every}")
    if cfg.dist_backend not in BACKENDS:
        raise UsageError(f"unknown --dist-backend {cfg.dist_backend!r}; valid: {', '.join(BACKENDS)}")
    if cfg.kl_warmup < 0 or cfg.grad_clip < 0 or cfg.patience < 0 or cfg.iw_samples < 0:
        raise UsageError("--kl-warmup, --grad-clip, --patience and --iw-samples must be >= 0")
    check_precision(cfg.precision, resolve_device(cfg.device) if cfg.precision == "fp16" else torch.device("cpu"))


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based); stateless so resuming needs no scheduler state."""
    if cfg.lr_schedule == "cosine":
        lo = cfg.lr * cfg.lr_min_factor
        return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * epoch / max(1, cfg.epochs - 1)))
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay**epoch
    return cfg.lr


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records a run's ``metrics.jsonl`` holds (what ``Trainer`` writes); [] without one."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """One short log line for a finished epoch (used when stderr is not a terminal)."""
    parts = [f"epoch {rec['epoch'] + 1}/{epochs}", f"loss {rec['train_loss']:.3f}"]
    for key, name in (("val_elbo", "val ELBO"), ("val_iwae", "val bound"), ("val_accuracy", "val acc")):
        if key in rec:
            parts.append(f"{name} {rec[key]:.3f}")
    parts += [f"{rec['epoch_time_s']:.1f} s", f"{rec['samples_per_s']:.0f} ex/s"]
    if rec.get("best_epoch") == rec["epoch"]:
        parts.append("best")
    return ", ".join(parts)


class Trainer:
    """Trains ``model`` on ``data.train``, validating on ``data.val`` every epoch.

    With ``run_dir`` it writes ``metrics.jsonl``, ``model.safetensors`` (best validation ELBO;
    for an IWAE its k-sample bound) and ``last.safetensors`` (everything needed to resume). Each callback is called as
    ``cb(trainer, record)`` after an epoch is logged and checkpointed.

    ``model`` holds the weights the optimizer steps; ``eval_model`` the weights that are
    validated, saved as best and returned: their moving average when ``cfg.weight_average`` > 0
    (see ``average.py``), else ``model`` itself.
    """

    def __init__(self, model: torch.nn.Module, data: Data, cfg: TrainConfig, run_dir: Path | None = None,
                 *, progress: bool = True, callbacks: list[Callable[["Trainer", dict[str, Any]], None]] | None = None,
                 world: World | None = None) -> None:
        check_config(cfg)
        if cfg.iw_samples and getattr(model, "no_density", None):
            raise UsageError(f"--iw-samples: {model.no_density}")
        self.cfg, self.data, self.run_dir = cfg, data, run_dir
        # The processes of a distributed run (training/distributed.py); World() is one process.
        # Every process trains alike; only rank 0 writes and shows progress.
        self.world = world or current_world()
        self.device = resolve_device(cfg.device)
        if self.world.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        if self.device.type == "cpu":
            keep_freed_memory()  # large per-step temporaries (IWAE's k * B rows) without page faults
        self.model = model.to(self.device)
        # Convolutions on CPU in oneDNN's own layout (memory.channels_last), before the optimizers
        # make their moments alike. (Not under several processes: their collectives take tensors
        # in the default layout.)
        if self.device.type == "cpu" and not self.world.active:
            channels_last(self.model)
        self.progress = progress and self.world.writes
        self.callbacks = callbacks or []
        # One Adam per player: {"model": ...} for a one-player model, else the model's players
        # (e.g. {"critic": ..., "vae": ...}); ``opt`` is the first.
        self.opts = player_optimizers(self.model, cfg.lr, cfg.weight_decay)
        self.opt = next(iter(self.opts.values()))
        self.players = len(self.opts) > 1
        # --precision (precision.py): the forward under autocast for bf16/fp16, a loss scale per
        # player for fp16; weights, gradients and optimizer state stay float32.
        self.precision = Precision(cfg.precision, self.device, self.opts)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        # best_val: the best validation value of best_metric ("val_iwae" for models trained on a
        # k-sample bound, else "val_elbo"), the criterion for model.safetensors and patience.
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best_val": -math.inf, "best_metric": None,
                                      "best_epoch": -1, "since_best": 0, "skipped_steps": 0}
        self.history: list[dict[str, Any]] = []
        # The whole training set (x and whatever comes with it) is moved to the device once;
        # batches are slices of it.
        self.train = data.train.to(self.device)
        if cfg.data_init:
            self.model.init_from_data(self.train[:10000].x)
        self.world.broadcast_module(self.model)
        self.average = WeightAverage(self.model, cfg.weight_average) if cfg.weight_average > 0 else None
        self.eval_model = self.average.model if self.average is not None else self.model
        # The hand-derived step where it applies (same loss and gradients as autograd).
        # With matmul_precision "medium" its matmuls run on bfloat16 copies (AMX on recent CPUs).
        low = torch.bfloat16 if cfg.matmul_precision == "medium" else None
        # On a GPU the whole autograd step is recorded as a CUDA graph instead (see graphed.py):
        # there the launches, not the arithmetic, limit small models.
        # (Only for models that read x alone: the recorded step takes one input tensor.)
        # (Nor under several processes: their gradients are reduced between backward and update.)
        # (Nor under fp16: its loss scale is updated eagerly.)
        # (Nor for a model with a module that reads values back to the host in its step and says so
        # with ``graph_safe = False``: an ONNX feature net's shape arithmetic.)
        self.use_graphs = (self.device.type == "cuda" and cfg.cuda_graphs and self.opt.fused and not self.players
                           and not getattr(self.model, "batch_fields", ()) and not self.world.active
                           and not self.precision.scalers
                           and all(getattr(m, "graph_safe", True) for m in self.model.modules()))
        # The hand-derived step is float32 code: under bf16/fp16, autograd with autocast instead.
        fast = cfg.fast_path and not self.use_graphs and not self.precision.enabled
        self.fast: Any = None
        if fast and not self.players and supports(self.model):
            self.fast = FastStep(self.model, matmul_dtype=low)
        elif fast and self.players:  # the AAE's and the VAE-GAN's players, by hand too
            self.fast = players_step(self.model, matmul_dtype=low)
        self.guard = Guard(self.state, cfg.max_nonfinite, cfg.grad_clip, self.device)
        self.step: Any = None  # the step engine, chosen when training starts (see steps.py)
        # Exact resume inside an epoch: the data generator's state when the epoch's order was drawn.
        self._epoch_gen: torch.Tensor | None = None
        self._stop = StopRequest()
        self._last_save = time.monotonic()

    @property
    def train_x(self) -> torch.Tensor:
        """The training examples on the device (N, *spec.shape)."""
        return self.train.x

    # -- persistence ----------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state(), "data": self.gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _save(self) -> None:
        if self.run_dir is None or not self.world.writes:  # (every process holds the same state)
            self._last_save = time.monotonic()
            return
        rng = self._rng_state()
        if self.precision.scalers:  # fp16: the loss scales (a few numbers, JSON with the trainer state)
            self.state["loss_scale"] = self.precision.state_dict()
        if self.state.get("epoch_pos"):  # inside an epoch: its order is redrawn from the epoch's start
            rng["epoch_data"] = self._epoch_gen
        save_checkpoint(self.run_dir / "last.safetensors", self.model, self.opts, rng, self.state,
                        self.average.model if self.average is not None else None)
        self._last_save = time.monotonic()

    def resume(self) -> None:
        """Restore model, optimizer, RNGs, counters and metrics from ``run_dir/last.safetensors``
        (or, when that file is damaged, from the previous checkpoint kept beside it), including a
        position inside an epoch."""
        assert self.run_dir is not None
        avg = self.average.model if self.average is not None else None
        rng, self.state, had_average = resume_checkpoint(self.run_dir / "last.safetensors", self.model, self.opts, avg)
        self.guard.state = self.state
        self._epoch_gen = rng.get("epoch_data")
        # fp16's loss scales; a run saved under another precision starts with fresh ones
        self.precision.load_state_dict(self.state.pop("loss_scale", None) or {})
        if "best_val_elbo" in self.state:  # saved before the criterion was named: it was the ELBO
            self.state["best_val"] = self.state.pop("best_val_elbo")
            self.state["best_metric"] = "val_elbo"
        if self.average is not None and not had_average:  # a run saved before averaging existed
            self.average.reset()
        torch.set_rng_state(rng["torch"])
        self.gen.set_state(rng["data"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        path = self.run_dir / "metrics.jsonl"
        if path.exists():  # drop records of epochs after the checkpoint (an interrupted run)
            self.history = [r for r in read_history(self.run_dir) if r["epoch"] < self.state["epoch"]]
            if self.world.writes:
                write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))

    # -- the loop ---------------------------------------------------------------------------------
    def _epoch_order(self) -> torch.Tensor:
        """This epoch's order of the training examples. A model that asks for labelled examples in
        every batch (``labelled_per_batch``, e.g. M2 with 100 labels among 50,000) gets them
        cycled through the epoch (a value below 1 is a share of the batch size); otherwise one
        random permutation."""
        per = getattr(self.model, "labelled_per_batch", 0)
        per = max(1, round(per * self.cfg.batch_size)) if 0 < per < 1 else int(per)
        mask = self.train.labelled
        if per and self.cfg.batch_size > 1 and mask is not None and 0 < int(mask.sum()) < len(mask):
            return labelled_first_order(mask.cpu(), self.cfg.batch_size, per, self.gen)
        return torch.randperm(len(self.train), generator=self.gen)

    def _epoch_batches(self) -> Batch:
        """This epoch's training data, shuffled with one gather (and re-binarized if dynamic). Data
        streamed from disk (``data.stream.StreamSplit``) is shuffled lazily: slices read their rows."""
        batch = self.train.select(self._epoch_order().to(self.device))
        if not self.data.dynamic_binarize:
            return batch
        xs = batch.x
        if self.device.type == "cpu":
            u = torch.rand(xs.shape, generator=self.gen)
        else:  # drawn on the device (47M numbers an MNIST epoch), seeded from the data generator
            seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
            g = torch.Generator(device=self.device).manual_seed(seed)
            u = torch.rand(xs.shape, generator=g, device=self.device)
        return batch.replace(x=(u < xs).to(xs.dtype))

    @property
    def graphed(self) -> GraphedStep | None:
        """The recorded CUDA-graph step, once made (None with another engine)."""
        return self.step.graph if isinstance(self.step, GraphStep) else None

    def _make_graph(self, example: torch.Tensor) -> GraphedStep:
        """Record the step on first use.

        A recording that fails stops training with one line (TrainingError): it leaves the CUDA
        random generator in recording mode (and may leave a sticky CUDA error), so this process
        can make no more random draws on the GPU, and an eager fallback would fail at its first."""
        try:
            # recorded on CUDA; elsewhere (tests on CPUs) the same step runs eagerly
            return GraphedStep(self.model, self.opt, example, capture=self.device.type == "cuda", precision=self.precision)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise TrainingError(f"recording the training step as a CUDA graph failed ({type(e).__name__}: "
                                f"{first}); train with --cuda-graphs off (saved epochs are intact)") from None

    def _choose_step(self) -> Any:
        """The engine that runs one training step, chosen once: several players, the CUDA graph,
        the hand-derived CPU step, or autograd (see steps.py); under several processes, run on
        this process's part of each batch with gradients averaged over all (distributed.py)."""
        step = self._one_process_step()
        return ShardedStep(step, self.world) if self.world.active else step

    def _one_process_step(self) -> Any:
        if self.players:
            if self.fast is not None:
                return HandDerivedPlayersStep(self.model, self.opts, self.guard, self.fast)
            return PlayersStep(self.model, self.opts, self.guard, self.precision)
        if self.use_graphs:
            return GraphStep(self.model, self.opt, self.guard, self.cfg.batch_size, self._make_graph, self.precision)
        if self.fast is not None:
            return HandDerivedStep(self.model, self.opt, self.guard, self.fast)
        return AutogradStep(self.model, self.opt, self.guard, self.precision)

    def _term_names(self) -> tuple[str, ...]:
        return ("loss", "elbo", "recon", "kl", *getattr(self.model, "extra_terms", ()))

    def _mean_terms(self, terms: list[dict[str, torch.Tensor]], sizes: list[int]) -> dict[str, float]:
        """Example-weighted means of the per-step terms (loss, elbo, recon, kl and the model's extras)."""
        names = self._term_names()
        if not terms:
            return {k: math.nan for k in names}
        # terms this model never returns (a deterministic AAE's elbo and kl) are left out, not NaN
        names = tuple(k for k in names if any(k in row for row in terms))
        t = torch.stack([torch.stack([row.get(k, torch.tensor(math.nan, device=self.device)).reshape(())
                                      for k in names]) for row in terms]).double()  # (steps, terms)
        w = torch.tensor(sizes, dtype=torch.float64, device=t.device)
        return dict(zip(names, ((w @ t) / w.sum()).tolist()))

    def _checkpoint_due(self, i: int = 0) -> bool:
        every = self.cfg.checkpoint_every
        due = every > 0 and time.monotonic() - self._last_save >= every
        if not self.world.active:
            return self._stop.requested or due
        # Several processes decide together, every 16th batch (one small all-reduce): a stop
        # asked of any process stops all (after rank 0 saves), and rank 0's clock says when to save.
        if (i // self.cfg.batch_size) % 16:
            return False
        flags = torch.tensor([float(self._stop.requested), float(due and self.world.writes)], device=self.device)
        stop, due = (self.world.all_sum(flags) > 0).tolist()
        self._stop.requested = stop
        return stop or due

    def _save_inside_epoch(self, pos: int, terms: list, sizes: list[int]) -> None:
        """Checkpoint at example ``pos`` of this epoch (with the epoch's running means), then stop
        if a signal asked for it."""
        self.state.update(epoch_pos=pos, epoch_partial={"means": self._mean_terms(terms, sizes), "seen": sum(sizes),
                                                        "bad_run": dict(self.guard.runs)})
        self._save()
        if self._stop.requested:
            raise KeyboardInterrupt

    def _resume_partial(self, start: int) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
        """The running means and non-finite runs of an epoch resumed at example ``start``."""
        partial = self.state.pop("epoch_partial", None) if start else None
        if not partial:
            return [], []
        runs = partial.get("bad_run", 0)
        self.guard.runs = dict(runs) if isinstance(runs, dict) else {"model": int(runs)}
        means = partial["means"]
        if isinstance(means, list):  # saved as (loss, elbo, recon, kl)
            means = dict(zip(("loss", "elbo", "recon", "kl"), means))
        if not partial["seen"]:
            return [], []
        return [{k: torch.tensor(v, device=self.device) for k, v in means.items()}], [partial["seen"]]

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        start = int(self.state.get("epoch_pos", 0))
        if start and self._epoch_gen is not None:  # resumed inside this epoch: redraw its order
            self.gen.set_state(self._epoch_gen)
        self._epoch_gen = self.gen.get_state()
        batch = self._epoch_batches()
        n, bs = len(batch), cfg.batch_size
        # Per-step terms (0-dim tensors), reduced once per epoch: no extra kernels or device syncs
        # on the training step.
        self.guard.runs, self.guard.epoch = {}, epoch
        terms, sizes = self._resume_partial(start)
        bar = self._bar
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        t0 = time.perf_counter()
        self.model.train()
        step = self.step
        step.begin_epoch(lr_at(cfg, epoch), batch[:bs])  # sets each optimizer's rate (a player's: times its scale)
        for i in range(start, n, bs):
            if i > start and step.saves_inside_epoch and self.run_dir is not None and self._checkpoint_due(i):
                self._save_inside_epoch(i, terms, sizes)
            b = batch[i : i + bs]
            out = step(b, kl_weight_at(epoch + i / n, cfg.kl_warmup, cfg.kl_schedule))
            if out is None:  # skipped: a loss or gradient was not finite (counted by the guard)
                continue
            if self.average is not None:
                self.average.update(self.state["step"])
            self.state["step"] += 1
            bar.update(len(b))
            if out is QUEUED:  # on the device; counted and checked at the end of the epoch
                continue
            terms.append(out)
            sizes.append(len(b))
            if self.progress and self.state["step"] % 50 == 0:
                s = self._mean_terms(terms[-50:], sizes[-50:])
                shown = {k: f"{s[k]:.2f}" for k in ("loss", "elbo", "kl") if k in s}
                bar.set_postfix(**shown, ex_s=f"{sum(sizes) / (time.perf_counter() - t0):.0f}", refresh=False)
        queued = step.end_epoch()
        if queued is not None:
            self.state["step"] -= queued["skipped"]
            if queued["good"]:
                terms.insert(0, {k: torch.tensor(v, device=self.device) for k, v in queued["means"].items()})
                sizes.insert(0, queued["good"] * bs)
        dt = time.perf_counter() - t0
        s, seen = self._mean_terms(terms, sizes), sum(sizes)
        rec = {f"train_{k}": v for k, v in s.items()}
        rec.update({"kl_weight": kl_weight_at(epoch + 1, cfg.kl_warmup, cfg.kl_schedule),
                    "samples_per_s": seen / dt if dt > 0 else 0.0, "epoch_time_s": dt})
        return rec

    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; return the per-epoch records (also in metrics.jsonl)."""
        cfg = self.cfg
        n = len(self.train)
        # One bar for the whole run (examples seen), so short epochs do not print a line each. When
        # stderr is a log file rather than a terminal, one short line per epoch replaces the bar.
        self._log_lines = self.progress and not sys.stderr.isatty()
        self._bar = tqdm(total=n * cfg.epochs, initial=n * self.state["epoch"],
                         disable=not self.progress or self._log_lines,
                         leave=False, unit="ex", unit_scale=True, file=sys.stderr, mininterval=0.5)
        self._last_save = time.monotonic()
        if self.step is None:
            self.step = self._choose_step()
        # enable_grad: a caller's torch.no_grad() (an evaluation script) must not turn training off
        with self._bar, float_mode(cfg.matmul_precision), torch.enable_grad(), stop_on_signals() as self._stop:
            for epoch in range(self.state["epoch"], cfg.epochs):
                if self.world.any(self._stop.requested, self.device):  # a signal during the last validation: that epoch is saved
                    raise KeyboardInterrupt
                rec = {"epoch": epoch, "step": 0, "lr": lr_at(cfg, epoch)}
                rec.update(self._train_epoch(epoch))
                if self.average is not None:
                    self.average.sync_buffers()
                if len(self.data.val):  # with no validation split the last epoch counts as best
                    rec.update({f"val_{k}": v for k, v in self._validate().items()})
                rec["step"], rec["skipped_steps"] = self.state["step"], self.state["skipped_steps"]
                if self.state.get("skipped_by_player") and self.players:
                    rec["skipped_by_player"] = dict(self.state["skipped_by_player"])
                self._check_critic(epoch, rec)
                self._end_epoch(epoch, rec)
                if cfg.patience and self.world.from_rank0(self.state["since_best"] >= cfg.patience, self.device):
                    break
        return self.history

    def _validate(self) -> dict[str, float]:
        """Means of the model's loss terms over the validation split; under several processes
        each validates its part (with noise keyed by its rank) and the means are combined."""
        cfg, val, w = self.cfg, self.data.val, self.world
        if not w.active or len(val) < w.size:
            return loss_terms(self.eval_model, val, batch_size=cfg.eval_batch_size, seed=cfg.seed + 1)
        lo, hi = w.part(len(val))
        part = loss_terms(self.eval_model, val[lo:hi], batch_size=cfg.eval_batch_size, seed=cfg.seed + 1 + 7919 * w.rank)
        keys = sorted(part)
        sums = torch.tensor([part[k] * (hi - lo) for k in keys], dtype=torch.float64, device=self.device)
        return dict(zip(keys, (w.all_sum(sums) / len(val)).tolist()))

    #: a critic whose accuracy averages at least this over a whole epoch has won (its opponent
    #: gets no useful gradient)
    CRITIC_WON = 0.99

    def _check_critic(self, epoch: int, rec: dict[str, Any]) -> None:
        key = getattr(self.model, "critic_accuracy", None)
        acc = rec.get(f"train_{key}") if key else None
        if acc is None or not math.isfinite(acc) or acc < self.CRITIC_WON:
            return
        rec["critic_won"] = True
        if self.progress:
            msg = (f"vaekit: epoch {epoch + 1}: the critic won (its accuracy was {100 * acc:.1f}% over the whole "
                   "epoch), so the other players learn little from it; try a lower critic learning rate or more "
                   "noise/regularisation on it")
            if self._bar.disable:
                print(msg, file=sys.stderr, flush=True)
            else:
                self._bar.write(msg, file=sys.stderr)

    def _end_epoch(self, epoch: int, rec: dict[str, Any]) -> None:
        st = self.state
        # An IWAE is selected by the bound it trains on (its one-sample ELBO can fall while the
        # k-sample bound, and the likelihood, still rise); other models by the ELBO, unless the
        # model names another validation key (higher is better), e.g. M2's "val_accuracy".
        # A model with no validation score to select by (adversarial models: their losses are a
        # game's, not a fit's) names "last": every epoch replaces the saved weights.
        metric = getattr(self.model, "selection_metric", None)
        if metric not in rec and metric != "last":
            metric = "val_iwae" if "val_iwae" in rec else "val_elbo"
        if st.get("best_metric") != metric:  # a new run, or one saved under the other criterion
            st.update(best_val=-math.inf, best_metric=metric)
        if metric == "last":
            val = float(epoch)
        else:
            val = rec.get(metric, rec.get("train_elbo", math.nan) if not len(self.data.val) else math.nan)
        improved = math.isfinite(val) and (val > st["best_val"] or not len(self.data.val))
        if improved:
            st.update(best_val=val, best_epoch=epoch, since_best=0)
            if self.run_dir is not None and self.world.writes:
                save_tensors(self.run_dir / "model.safetensors", self.eval_model.state_dict())
        else:
            st["since_best"] += 1
        st["epoch"] = epoch + 1
        st.pop("epoch_pos", None)
        rec["best_epoch"] = st["best_epoch"]
        self.history.append(rec)
        if self.run_dir is not None and self.world.writes:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        self._save()
        if getattr(self, "_log_lines", False):
            print(epoch_line(rec, self.cfg.epochs), file=sys.stderr, flush=True)
        for cb in self.callbacks:
            cb(self, rec)
