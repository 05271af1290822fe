"""``vaekit features``: train the reference classifier on labelled data and save it as a feature net
(for ``--recon-loss perceptual --feature-net NET`` and ``evaluate --sample-quality --feature-net NET``).

Not to be confused with ``vaekit train --features RUN_DIR`` (M1+M2, ``vaekit.features``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..apps.feature_net import REFERENCE_EPOCHS, save_feature_net, train_feature_net
from ..data.datasets import load_data
from ..errors import UsageError
from ..modules.feature_nets import FEATURE_NETS
from ._shared import emit, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="train a reference classifier on labelled data and save it as a feature net")
    p.add_argument("--data", required=True, help="a labelled dataset: name (mnist, fashion-mnist, digits) or path")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--image-size", type=int, default=None, help="resize folder images to this size (square)")
    p.add_argument("--label-column", default=None, help="CSV column holding labels")
    p.add_argument("--out", required=True, help="directory to write (weights.safetensors + feature_net.json)")
    p.add_argument("--arch", default=None, help=f"{' | '.join(FEATURE_NETS.names())} (default: small-cnn for images, else mlp)")
    p.add_argument("--epochs", type=int, default=REFERENCE_EPOCHS, help="passes over the labelled training split")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--json", action="store_true", help="print one JSON object (the net's metadata)")
    p.set_defaults(func=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    positive("--epochs", args.epochs, integer=True)
    positive("--batch-size", args.batch_size, integer=True)
    if args.arch is not None:
        FEATURE_NETS.get(args.arch)  # an unknown name: one line with the valid ones, before loading data
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out} already exists; choose another name")
    data = load_data(args.data, data_dir=args.data_dir, image_size=args.image_size, label_column=args.label_column,
                     seed=args.seed)
    log = None if (args.quiet or args.json) else (lambda line: print(line, file=sys.stderr))
    net, meta = train_feature_net(data, arch=args.arch, epochs=args.epochs, seed=args.seed,
                                  batch_size=args.batch_size, log=log)
    save_feature_net(out, net, meta)
    acc = meta["test_accuracy"]
    lines = [f"trained {meta['architecture']} on {meta['dataset']} ({meta['epochs']} epochs, {meta['train_seconds']:.0f} s): "
             + ("no labelled test split" if acc is None else f"test accuracy {acc:.4f}"),
             f"feature net: {out}"]
    return emit(args, {**meta, "out": str(out)}, lines)
