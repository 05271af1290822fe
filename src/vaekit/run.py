"""The run directory: config.json + model.safetensors + last.safetensors + metrics.jsonl + figures.

``train(...)`` is the Python entry point that does what ``vaekit train`` does; ``load(run_dir)``
rebuilds the trained model from the directory alone (no dataset needed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import __version__
from .config import RunConfig, field_sections, make_config
from .data.datasets import Data, load_data
from .data.spec import DataSpec
from .errors import CheckpointError, UsageError
from .io import save_tensors, write_json
from .models.base import BaseModel, build_model
from .training import distributed
from .training.checkpoint import load_weights
from .training.trainer import Trainer, check_config, resolve_device


@dataclass
class Run:
    """A finished (or resumed) training run."""

    dir: Path | None
    model: BaseModel
    config: RunConfig
    history: list[dict[str, Any]]
    test: dict[str, Any] = field(default_factory=dict)
    data: Data | None = None


def read_config(run_dir: str | Path) -> tuple[RunConfig, DataSpec, dict[str, Any]]:
    """Parse ``run_dir/config.json`` into (RunConfig, DataSpec, data source description)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    try:
        d = json.loads(path.read_text())
        cfg = RunConfig.from_dict({k: d[k] for k in ("data", "model", "train")}, where=str(path))
        spec = DataSpec.from_dict(d["spec"])
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a vaekit run directory (no config.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UsageError) as e:
        raise CheckpointError(f"{path} is corrupt or not a vaekit config ({e})") from None
    return cfg, spec, d.get("source", {})


def load(run_dir: str | Path, *, device: str = "cpu", which: str = "best") -> BaseModel:
    """Rebuild the trained model from a run directory, in eval mode.

    which: "best" (``model.safetensors``, best validation ELBO, or k-sample bound for an IWAE) or "last" (the last epoch).
    """
    cfg, spec, _ = read_config(run_dir)
    model = build_model(cfg.model, spec)
    name = "model.safetensors" if which == "best" else "last.safetensors"
    path = Path(run_dir) / name
    try:
        weights = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: the run has no saved weights yet") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e})") from None
    if which == "last":
        weights = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
    load_weights(model, weights, str(path))
    return model.to(resolve_device(device)).eval()


def load_run_data(cfg: RunConfig, data_dir: str | None = None) -> Data:
    """The data a run trains on, as its config describes it (``data_dir`` overrides the saved one)."""
    dc = cfg.data
    return load_data(dc.source, data_dir=data_dir or dc.data_dir, image_size=dc.image_size, binarize=dc.binarize,
                     val_fraction=dc.val_fraction, test_fraction=dc.test_fraction, seed=cfg.train.seed,
                     label_column=dc.label_column, condition_columns=dc.condition_columns, condition=dc.condition,
                     labels_per_class=dc.labels_per_class, label_seed=dc.label_seed, window=dc.window,
                     stride=dc.stride, sequences=cfg.model.arch in ("gru", "lstm"),
                     mask_anomalies=dc.mask_anomalies, tokens=dc.tokens, vocab_size=dc.vocab_size, max_len=dc.max_len,
                     data_in_memory=dc.data_in_memory)


def _write_config(run_dir: Path, cfg: RunConfig, model: BaseModel, data: Data, *, resumed: bool = False) -> None:
    """config.json: the resolved settings. A resumed run keeps its "created" time and records
    when it was last resumed."""
    d = cfg.to_dict()
    d["model"] = dataclasses.asdict(model.config)  # resolved: likelihood and widths filled in
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    created = now
    if resumed:
        created = json.loads((run_dir / "config.json").read_text()).get("created", now)  # read_config parsed it
        d["resumed"] = now
    d.update(spec=data.spec.to_dict(), source=data.source, vaekit_version=__version__, created=created)
    write_json(run_dir / "config.json", d)


def train(data: str | None = None, *, out: str | Path | None = None, config_file: str | Path | None = None,
          resume: bool = False, progress: bool = True, evaluate_test: bool = True, figures: bool = True,
          callbacks: list[Callable[[Any, dict[str, Any]], None]] | None = None, **options: Any) -> Run:
    """Train a VAE end to end, as ``vaekit train`` does, and return the :class:`Run`.

    ``vaekit.train("mnist", epochs=10, out="runs/mnist", latent_dim=20)``. Options are the flat
    config names (``python -c "import vaekit; print(vaekit.options())"`` lists them). With
    ``resume=True`` the configuration is read from ``out/config.json`` and training continues
    from ``out/last.safetensors`` (``epochs`` may be raised to train longer). ``tensorboard=DIR``
    also logs the run for TensorBoard (``vaekit.tensorboard``; a resumed run appends to its log).
    """
    run_dir = Path(out) if out is not None else None
    if resume and run_dir is not None and data is not None and not (run_dir / "config.json").exists() \
            and not (run_dir.exists() and any(run_dir.iterdir())):
        # the first run was stopped before it wrote anything: the same command with --resume starts it
        print(f"vaekit: nothing to resume in {run_dir} (the first run stopped before it saved anything); "
              "starting the run", file=sys.stderr)
        resume = False
    if resume:
        if run_dir is None:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        cfg, _, _ = read_config(run_dir)
        _check_resume_options(run_dir, cfg, data, options)
        cfg = make_config(None, base=cfg, **options)
    else:
        cfg = make_config(config_file, **({"source": data} if data is not None else {}), **options)
        if run_dir is not None and (run_dir / "config.json").exists():
            raise UsageError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    check_config(cfg.train)
    if cfg.train.tensorboard:  # installed, and a folder this run may log to: before any work
        from .tensorboard import check_log_dir

        check_log_dir(cfg.train.tensorboard, resume=resume)
    from .perceptual import check_recon_loss

    perceptual = check_recon_loss(cfg)
    # Under torchrun (several processes) each process trains its part of every batch; rank 0 alone
    # writes the run directory and evaluates (training/distributed.py). One process: World().
    with distributed.session(cfg.train.device, cfg.train.dist_backend, cfg.train.batch_size) as world:
        trainer = _fit(cfg, run_dir, resume=resume, perceptual=perceptual, world=world, progress=progress,
                       callbacks=callbacks)
    run = Run(run_dir, trainer.eval_model, cfg, trainer.history, data=trainer.data)
    if not world.writes:
        return run
    if run_dir is not None:
        if not (run_dir / "model.safetensors").exists():  # validation never finite: keep the last weights
            save_tensors(run_dir / "model.safetensors", trainer.eval_model.state_dict())
        run.model = load(run_dir, device=str(trainer.device))
    if evaluate_test:
        from .report import finish_run

        run.test = finish_run(run, figures=figures)
    return run


def _fit(cfg: RunConfig, run_dir: Path | None, *, resume: bool, perceptual: Any, world: distributed.World,
         progress: bool, callbacks: list[Callable[[Any, dict[str, Any]], None]] | None) -> Trainer:
    """Build the model and its trainer, resume or start the run directory (rank 0 writes), train."""
    from .perceptual import build_perceptual

    torch.manual_seed(cfg.train.seed)
    d = load_run_data(cfg)
    checkpointed = run_dir is not None and any((run_dir / f).exists()
                                               for f in ("last.safetensors", "last.previous.safetensors"))
    # a new run, or a resumed one killed before its first checkpoint (which starts over): weights
    # that come from another file (M1's encoder, a feature net) are copied in again
    fresh = not (resume and checkpointed)
    if fresh and (cfg.data.features is not None or cfg.model.extra.get("features")):  # M1+M2
        from .features import build_on_features

        model = build_on_features(cfg, d)
    elif fresh and perceptual:  # the feature net's weights are copied into the model
        model = build_perceptual(cfg, d)
    else:
        model = build_model(cfg.model, d.spec)
    model.check_data(d.train)
    trainer = Trainer(model, d, cfg.train, run_dir, progress=progress, callbacks=callbacks, world=world)
    if run_dir is not None:
        if world.writes:
            run_dir.mkdir(parents=True, exist_ok=True)
        if resume and checkpointed:
            trainer.resume()
        elif resume and world.writes:  # killed before its first checkpoint: start over with the saved settings
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if world.writes:
            _write_config(run_dir, cfg, model, d, resumed=resume)
    board = None
    if cfg.train.tensorboard and world.writes:
        from .tensorboard import TensorBoardLogger

        board = TensorBoardLogger(cfg.train.tensorboard, seed=cfg.train.seed,
                                  config={**cfg.to_dict(), "model": dataclasses.asdict(model.config)})
        trainer.callbacks = [*trainer.callbacks, board]  # (not appended: the list may be the caller's)
    try:
        trainer.fit()
    except Exception as e:
        distributed.raise_if_peer_lost(world, e)
        raise
    finally:
        if board is not None:
            board.close()
    return trainer


#: What may change on --resume: length, where and how fast it computes, how the same objective's
#: gradient is estimated (an IWAE's --gradient-estimator) and where it logs; never the model or the data.
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir", "data_in_memory", "patience", "matmul_precision", "precision",
                     "gradient_estimator", "cuda_graphs", "checkpoint_every", "tensorboard", "dist_backend")


def _check_resume_options(run_dir: Path, cfg: RunConfig, data: str | None, options: dict[str, Any]) -> None:
    """Refuse only the settings that differ from the saved run, naming them and their saved values."""
    saved = {**dataclasses.asdict(cfg.data), **dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.train)}
    given = make_config(None, base=RunConfig.from_dict(cfg.to_dict()), **options)  # checks names and types
    now = {**dataclasses.asdict(given.data), **dataclasses.asdict(given.model), **dataclasses.asdict(given.train)}
    differ = [k for k in options if k not in RESUME_MAY_CHANGE and now[k] != saved[k]]
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    parts = [f"{flag(k)} {options[k]} (saved: {saved[k]})" for k in differ]
    if data is not None and data != cfg.data.source and \
            str(Path(data).expanduser().resolve()) != str(Path(cfg.data.source).expanduser().resolve()):
        parts.insert(0, f"--data {data} (saved: {cfg.data.source})")
    if parts:
        raise UsageError(f"--resume continues {run_dir} with its saved settings, and these differ: {'; '.join(parts)}; "
                         f"drop them (or train a new run with another --out); only "
                         f"{', '.join(flag(k) for k in RESUME_MAY_CHANGE)} may change")


def options() -> dict[str, str]:
    """Every option ``train`` accepts, with the config section it belongs to."""
    return field_sections()
