"""Typed configuration: dataclasses, overridden by a TOML file, then by command-line flags.

Unknown keys and type mismatches are errors that name the valid keys.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .models.base import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared (see ``vaekit.data.load_data``)."""

    source: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    binarize: str = "none"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    label_column: str | None = None
    #: CSV columns taken out of the features as each example's condition vector c.
    condition_columns: list[str] | None = None
    #: a second array, table or image folder, one example per data example: the conditioning input c.
    condition: str | None = None
    #: keep this many labels per class of the training split, hide the rest (semi-supervised).
    labels_per_class: int | None = None
    label_seed: int = 0
    #: a trained run whose encoder maps the data to features (posterior means) first: M1+M2.
    features: str | None = None
    #: a series (CSV or .npy) is cut into windows of this many rows (None: not a series)...
    window: int | None = None
    #: ... starting every this many rows.
    stride: int = 1
    #: series with a label column: rows labelled anomalous are masked out of training (Donut's modified ELBO)
    mask_anomalies: bool = True
    #: sentences, one a line: "char" or "word" tokens (None: not text)
    tokens: str | None = None
    #: keep the most frequent N tokens (specials included); the rest become <unk>
    vocab_size: int | None = None
    #: pad or cut sentences to this many tokens (default: the longest training sentence + <eos>)
    max_len: int | None = None
    #: "yes": load the data into memory; "no": read a .npy file, a folder of .npy shards or an image
    #: folder from disk a batch at a time; "auto": stream such data only when it would not fit in memory
    data_in_memory: str = "auto"


@dataclass
class TrainConfig:
    """The optimisation. ``kl_warmup`` is in epochs; ``patience`` 0 turns early stopping off.

    lr_schedule: "none", "cosine" (to lr * lr_min_factor at the last epoch) or "exponential"
    (lr * lr_decay ** epoch). data_init: start the decoder's output bias at the training data's
    marginal (mean image). fast_path: use the hand-derived training step for MLP VAEs and AAEs (same
    gradients as autograd, fewer operations). matmul_precision: "highest" is exact fp32; "medium" lets
    float32 matrix multiplies run in bfloat16 on CPUs with AMX (and TF32/bf16 on GPUs).
    precision: "fp32", or mixed precision for the training step: "bf16" (GPUs, and CPUs with
    bf16 support) or "fp16" (CUDA GPUs only, with a dynamic loss scale): the forward runs under
    ``torch.autocast`` while weights, gradients, optimizer state and the loss terms stay float32
    (``training/precision.py``). A compute setting: it may change on --resume.
    weight_average: decay of the moving average of the weights that is validated, saved and
    returned (about the last 1 / (1 - decay) steps); 0 uses the raw weights.
    cuda_graphs: on a CUDA device, record the training step once as a CUDA graph and replay it
    (``training/graphed.py``); False launches every operator from Python.
    checkpoint_every: seconds between checkpoints inside an epoch (besides the one at each epoch's
    end), so that a killed run loses at most that much work; 0 checkpoints at epoch ends only.
    recon_loss: the reconstruction term trained on: "likelihood" (the pixel log-likelihood) or
    "perceptual" (plus ``perceptual_weight`` times the squared distance between the hidden
    activations of x and of the decoder's mean in the frozen ``feature_net``, DFC-VAE; see
    ``vaekit.perceptual``). A training objective, not a model: the ELBO reported stays the true one.
    feature_net: a directory written by ``vaekit features``, or a classifier exported to ONNX (``.onnx``;
        ``apps.onnx_import``); its weights are copied into the run.
    tensorboard: a folder to log the run to for TensorBoard (``vaekit.tensorboard.TensorBoardLogger``:
    every epoch's metrics, sample grids), the optional extra ``vaekit[tensorboard]``; None: no log.
    Where it logs, not what is trained: it may change on --resume, and a resumed run appends to it.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "none"
    lr_decay: float = 1.0
    lr_min_factor: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    kl_warmup: float = 0.0
    kl_schedule: str = "linear"
    patience: int = 0
    max_nonfinite: int = 20
    seed: int = 0
    device: str = "auto"
    matmul_precision: str = "highest"
    precision: str = "fp32"
    eval_batch_size: int = 1000
    iw_samples: int = 0
    data_init: bool = True
    fast_path: bool = True
    weight_average: float = 0.995
    cuda_graphs: bool = True
    checkpoint_every: float = 60.0
    recon_loss: str = "likelihood"
    feature_net: str | None = None
    perceptual_weight: float = 0.1  # modules.perceptual.DEFAULT_WEIGHT, measured
    tensorboard: str | None = None
    #: several processes (torchrun): "auto" (NCCL on GPUs, gloo on CPUs), "gloo" or "nccl"
    dist_backend: str = "auto"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"data": dataclasses.asdict(self.data), "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "RunConfig":
        cfg = cls()
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise UsageError(f"{where}: unknown section(s) {sorted(unknown)}; valid: data, model, train")
        for name in ("data", "model", "train"):
            apply(getattr(cfg, name), d.get(name, {}), f"{where} [{name}]")
        return cfg


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int may stand for float; None for Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0])
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(v, inner, key, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: {key} must be a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise UsageError(f"{where}: {key} must be {tp.__name__}, got {value!r}")
    return value


def apply(obj: Any, updates: dict[str, Any], where: str) -> None:
    """Set fields of dataclass ``obj`` from ``updates``, checking names and types."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        if key not in hints:
            raise UsageError(f"{where}: unknown key {key!r}; valid: {', '.join(names)}")
        setattr(obj, key, _coerce(value, hints[key], key, where))


def load_toml(path: str | Path) -> RunConfig:
    """Read a TOML config with [data], [model] and [train] tables."""
    p = Path(path)
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {p} is not valid TOML: {e}") from None
    return RunConfig.from_dict(d, where=str(p))


def field_sections() -> dict[str, str]:
    """Map each config field name to its section ("data", "model" or "train")."""
    out: dict[str, str] = {}
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, section)
    return out


def make_config(config_file: str | Path | None = None, *, base: RunConfig | None = None, **overrides: Any) -> RunConfig:
    """Defaults (or ``base``), then the TOML file, then keyword overrides (flat names such as
    ``latent_dim``)."""
    cfg = load_toml(config_file) if config_file else (base or RunConfig())
    sections = field_sections()
    for key, value in overrides.items():
        if key not in sections:
            raise UsageError(f"unknown option {key!r}; valid: {', '.join(sorted(sections))}")
        apply(getattr(cfg, sections[key]), {key: value}, "option")
    return cfg
