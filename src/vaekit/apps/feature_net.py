"""The reference classifier as a file: train it on labelled data, save and load it, and keep one per
dataset in a cache (``vaekit features``, ``evaluate --sample-quality``, ``--recon-loss perceptual``).

A feature net is a directory holding ``weights.safetensors`` and ``feature_net.json`` (architecture
name and arguments, input shape, classes, dataset and its fingerprint, test accuracy, vaekit
version). The directory appears whole or not at all: it is written under a temporary name beside
the target and renamed. Nothing is pickled. A classifier of the user's own, exported to ONNX, is
read as well (``apps.onnx_import``): wherever a feature net is asked for, NET may be an .onnx file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from .. import __version__
from ..data.batch import UNLABELLED
from ..data.datasets import Data
from ..errors import CheckpointError, UsageError
from ..io import save_tensors, write_json
from ..modules.feature_nets import build_feature_net, default_architecture

META_FILE, WEIGHTS_FILE = "feature_net.json", "weights.safetensors"
FORMAT = "vaekit-feature-net"
#: epochs of the reference classifier vaekit trains and caches by itself
REFERENCE_EPOCHS = 3


def require_labels(data: Data, what: str = "vaekit features") -> None:
    """UsageError (one line) unless the training split has labels."""
    y = data.train.y
    if y is None or data.spec.num_classes is None or not bool((y != UNLABELLED).any()):
        raise UsageError(f"{data.source.get('source', 'this data')} has no labels, and {what} trains a classifier "
                         "on labelled data: give a labelled dataset (mnist, fashion-mnist, digits, an image folder "
                         "with one subfolder per class, a CSV with --label-column, or an .npz with y)")


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Share of the labelled examples (y >= 0) that ``net`` classifies correctly."""
    keep = y != UNLABELLED
    x, y = x[keep], y[keep]
    if len(y) == 0:
        return float("nan")
    net.eval()
    right = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    return right / len(y)


def train_feature_net(data: Data, *, arch: str | None = None, epochs: int = REFERENCE_EPOCHS, seed: int = 0,
                      batch_size: int = 128, lr: float = 1e-3,
                      log: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the classifier on the labelled training examples of ``data`` (Adam, cross-entropy,
    ``epochs`` passes in a seeded order). Returns (the net in eval mode, its metadata dict)."""
    require_labels(data)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    shape = tuple(data.spec.shape)
    arch = arch or default_architecture(shape)
    keep = data.train.y != UNLABELLED
    x, y = data.train.x[keep], data.train.y[keep]
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # trains under a caller's no_grad too
        torch.manual_seed(seed)
        try:
            net = build_feature_net(arch, shape, data.spec.num_classes)
        except ValueError as e:
            raise UsageError(f"--arch {arch}: {e}") from None
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: validation accuracy {accuracy(net, data.val.x, data.val.y):.4f}")
    net.eval()
    test_y = data.test.y
    meta = {"format": FORMAT, "architecture": arch, "arch_args": net.arch_args, "input_shape": list(shape),
            "num_classes": int(data.spec.num_classes), "classes": [str(c) for c in data.source.get("classes") or []],
            "dataset": data.source.get("source"), "dataset_fingerprint": dataset_fingerprint(data),
            "test_accuracy": None if test_y is None else accuracy(net, data.test.x, test_y),
            "epochs": epochs, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1),
            "vaekit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return net, meta


def dataset_fingerprint(data: Data) -> str:
    """A hash of how the data were prepared (the source record) and of every split's values and labels."""
    h = hashlib.blake2b(digest_size=16)
    rec = {k: data.source.get(k) for k in ("source", "kind", "binarize", "image_size", "standardize", "classes",
                                           "val_fraction", "test_fraction", "seed", "label_column")}
    h.update(json.dumps(rec, sort_keys=True, default=str).encode())
    for s in (data.train, data.val, data.test):
        for t in (s.x, s.y):
            if t is not None:
                h.update(str(tuple(t.shape)).encode())
                h.update(memoryview(np.ascontiguousarray(t.numpy())).cast("B"))
    return h.hexdigest()


def save_feature_net(out: str | Path, net: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write the directory ``out`` (weights + metadata) whole: built under a temporary name beside it,
    then renamed. Refuses (UsageError) an ``out`` that already exists."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {out} already exists; choose another name (a feature net is written whole, "
                         "never over another file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_tensors(tmp / WEIGHTS_FILE, net.state_dict())
        write_json(tmp / META_FILE, meta)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)  # atomic; fails if another process created ``out`` meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_feature_net(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(net in eval mode, metadata) from a directory written by ``save_feature_net`` (or its JSON or
    weights file), or from an .onnx classifier (``apps.onnx_import.read_onnx``). CheckpointError for a missing or corrupt file, UsageError
    for an unknown architecture name; each one line naming the file."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        from .onnx_import import read_onnx

        return read_onnx(p)
    if p.is_file() and p.name in (META_FILE, WEIGHTS_FILE):
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"feature net {p} not found; train one with: vaekit features --data NAME --out {p}")
    meta = read_meta(p)
    try:
        net = build_feature_net(meta["architecture"], tuple(meta["input_shape"]), meta["num_classes"],
                                meta.get("arch_args"))
    except UsageError as e:
        raise UsageError(f"feature net {p}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"feature net {p / META_FILE} is corrupt or incomplete ({e})") from None
    try:
        weights = load_file(str(p / WEIGHTS_FILE))
        net.load_state_dict(weights)
    except FileNotFoundError:
        raise CheckpointError(f"feature net {p} has no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"feature net {p / WEIGHTS_FILE} is corrupt or does not match its "
                              f"{META_FILE} ({str(e).splitlines()[0]})") from None
    return net.eval(), meta


def read_meta(p: Path) -> dict[str, Any]:
    """The metadata of the feature net directory ``p``, checked for the keys that build it."""
    if not p.is_dir():
        raise CheckpointError(f"feature net {p} is neither a directory written by vaekit features nor an .onnx file")
    try:
        meta = json.loads((p / META_FILE).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for key in ("architecture", "input_shape", "num_classes"):
            if key not in meta:
                raise ValueError(f"no {key!r}")
    except FileNotFoundError:
        raise CheckpointError(f"feature net {p} has no {META_FILE}: not a directory written by vaekit features") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"feature net {p / META_FILE} is corrupt ({e})") from None
    return meta


def cache_root() -> Path:
    """Where reference classifiers are cached: ``$VAEKIT_CACHE/features``, else
    ``$XDG_CACHE_HOME/vaekit/features``, else ``~/.cache/vaekit/features``."""
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"]).expanduser() / "features"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vaekit" / "features"


def reference_feature_net(data: Data, *, log: Callable[[str], None] | None = None
                          ) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The reference classifier of ``data``: loaded from the cache when one was trained on exactly
    these data (``dataset_fingerprint``), else trained once (``REFERENCE_EPOCHS``, seed 0) and
    cached. Returns (net, metadata, its directory)."""
    require_labels(data, "the reference classifier")
    fp = dataset_fingerprint(data)
    name = Path(str(data.source.get("source", "data"))).name.replace(".", "_") or "data"
    where = cache_root() / f"{name}-{fp[:16]}"
    if where.exists():
        with contextlib.suppress(CheckpointError, UsageError):
            net, meta = load_feature_net(where)
            return net, meta, where
        shutil.rmtree(where, ignore_errors=True)  # a damaged cache entry: train it again
    if log is not None:
        log(f"training the reference classifier for {data.source.get('source')} (once; cached in {where})")
    net, meta = train_feature_net(data, epochs=REFERENCE_EPOCHS, log=log)
    try:
        save_feature_net(where, net, meta)
    except (UsageError, OSError):  # another process cached it first: use that one
        if where.exists():
            net, meta = load_feature_net(where)
    return net, meta, where
