"""Training checkpoints without pickle: one safetensors file holding the model weights, the
optimizer tensors and the RNG states, with the rest of the trainer state as JSON metadata.

One file means one atomic rename: a checkpoint is either the old one or the new one, whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from ..errors import CheckpointError
from ..io import save_tensors
from .optim import Adam


Optimizers = Union[Adam, dict[str, Adam]]


def _optimizer_tensors(opt: Optimizers) -> dict[str, torch.Tensor]:
    """``optim.<i>.<buffer>`` for one optimizer (or a one-player model's {"model": ...}), else
    ``optim.<player>.<i>.<buffer>`` for each player's."""
    if isinstance(opt, Adam):
        opt = {"model": opt}
    if list(opt) == ["model"]:
        return {f"optim.{k}": v for k, v in opt["model"].state_tensors().items()}
    return {f"optim.{name}.{k}": v for name, o in opt.items() for k, v in o.state_tensors().items()}


def _load_optimizers(opt: Optimizers, tensors: dict[str, torch.Tensor]) -> None:
    if isinstance(opt, Adam):
        opt = {"model": opt}
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    if list(opt) == ["model"]:
        opt["model"].load_state_tensors(state)
        return
    for name, o in opt.items():
        mine = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        try:
            o.load_state_tensors(mine)
        except ValueError as e:
            raise ValueError(f"{e} (player {name})") from None


def save_checkpoint(path: Path, model: torch.nn.Module, opt: Optimizers, rng: dict[str, torch.Tensor], state: dict[str, Any],
                    average: torch.nn.Module | None = None) -> None:
    """Write model weights, optimizer state, RNG states, the weight average (if any) and JSON
    ``state`` to one file atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.state_dict().items()})
    tensors.update(_optimizer_tensors(opt))
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    meta = {"trainer_state": json.dumps(state), "format": "vaekit-checkpoint-1"}
    # The new file is written whole beside the old one first; only then does the old one become
    # the previous checkpoint, kept in case the new one is later found damaged.
    tmp = path.with_name(f".{path.name}.new")
    save_tensors(tmp, tensors, meta)
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: last.safetensors -> last.previous.safetensors."""
    return path.with_name(path.stem + ".previous" + path.suffix)


def resume_checkpoint(path: Path, model: torch.nn.Module, opt: Optimizers,
                      average: torch.nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """``load_checkpoint`` of ``path``; when ``path`` is missing, truncated or corrupt and the
    previous checkpoint is intact, that one (saying so on stderr). A checkpoint of another model
    is an error either way."""
    prev = previous_path(path)
    try:
        return load_checkpoint(path, model, opt, average)
    except CheckpointError as e:
        if "another model" in str(e):
            raise
        if not prev.exists():
            if path.exists():  # there but unreadable, and nothing to fall back on: say what to do
                raise CheckpointError(f"{e}, and there is no previous checkpoint to fall back on; move it aside "
                                      "to start this run again from its saved configuration") from None
            raise
        reason = str(e)
    try:
        out = load_checkpoint(prev, model, opt, average)
    except CheckpointError as e:
        if "another model" in str(e):
            raise
        raise CheckpointError(f"{reason}, and the previous checkpoint {prev.name} cannot be read either; move both "
                              "aside to start this run again from its saved configuration") from None
    print(f"vaekit: {reason}; resuming from the previous checkpoint {prev}, which was kept", file=sys.stderr)
    return out


def load_checkpoint(path: Path, model: torch.nn.Module, opt: Optimizers,
                    average: torch.nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """Restore ``model``, ``opt`` and ``average`` in place; return (rng states, trainer state,
    whether the checkpoint held a weight average; without one ``average`` is left as it is)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({e})") from None
    if meta.get("format") != "vaekit-checkpoint-1":
        raise CheckpointError(f"{path} is not a vaekit training checkpoint")
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    load_weights(model, weights, str(path))
    try:
        _load_optimizers(opt, tensors)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; was it saved by another model?") from None
    avg = {k[8:]: v for k, v in tensors.items() if k.startswith("average.")}
    if average is not None and avg:
        load_weights(average, avg, str(path))
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, json.loads(meta["trainer_state"]), bool(avg)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict, turning key or shape mismatches into one clear CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or extra or bad:
        detail = (f"missing {missing[:3]}" if missing else "") or (f"unexpected {extra[:3]}" if extra else "")
        detail = detail or f"shape of {bad[0]} is {tuple(weights[bad[0]].shape)}, model has {tuple(own[bad[0]].shape)}"
        raise CheckpointError(f"weights in {where} do not fit this model ({detail}); was it saved by another model?")
    model.load_state_dict(weights)
