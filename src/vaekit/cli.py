"""The ``vaekit`` command line. It calls only the public Python API.

Usage and input errors print one line on stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

from .errors import VaekitError


class _Parser(argparse.ArgumentParser):
    """Exact flags only: with argparse's prefix matching, ``vaekit detect RUN --data x`` was taken
    as ``--data-dir x`` and the run's own test split was scored instead of x, without a word."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        if message.startswith("unrecognized arguments") and "--data" in message.split() \
                and "--input" in self._option_string_actions:
            message += " (this command reads its inputs from --input; --data-dir is where the run's dataset files are)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 400 or 200,200, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers like 400 or 200,200, got {text!r}")
    return vals


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number (e.g. 500), got {text!r}")
    return v


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected column names like age,height, got {text!r}")
    return names


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


S = argparse.SUPPRESS
# flag -> (config key, type, help). Defaults live in the config dataclasses, not here.
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "source", str, "dataset name (digits, mnist, fashion-mnist, binarized-mnist) or a path: image folder, .npy/.npz, .csv"),
    ("--data-dir", "data_dir", str, "folder holding the dataset files"),
    ("--image-size", "image_size", int, "resize folder images to this size (square)"),
    ("--data-in-memory", "data_in_memory", str, "auto | yes | no: no reads a .npy file, a folder of .npy shards "
     "(vaekit prepare) or an image folder from disk a batch at a time; auto does so when the data would not fit in memory"),
    ("--binarize", "binarize", str, "none | dynamic | static"),
    ("--val-fraction", "val_fraction", _finite, "fraction of train held out for validation"),
    ("--label-column", "label_column", str, "CSV column holding labels"),
    ("--window", "window", int, "cut a series (CSV or .npy, rows = time steps) into windows of this many rows"),
    ("--stride", "stride", int, "rows between the starts of consecutive windows (default 1)"),
    ("--tokens", "tokens", str, "read --data as sentences, one a line: char | word tokens"),
    ("--vocab-size", "vocab_size", int, "--tokens: keep the N most frequent tokens (the rest become <unk>)"),
    ("--max-len", "max_len", int, "--tokens: pad or cut sentences to N tokens (default: the longest training sentence)"),
    ("--mask-anomalies", "mask_anomalies", _on_off, "series with a label column: on | off: leave rows labelled anomalous out of training (default on)"),
    ("--condition-columns", "condition_columns", _name_list, "CSV columns that form each example's condition vector, e.g. age,sex"),
    ("--condition", "condition", str, "a second file or image folder paired with --data, one conditioning input per example"),
    ("--labels-per-class", "labels_per_class", int, "keep N labels per class of the training split, hide the rest (semi-supervised)"),
    ("--label-seed", "label_seed", int, "seed of the draw of --labels-per-class"),
    ("--features", "features", str, "a trained run whose encoder gives the features (M1+M2: --model m2 on M1's codes)"),
    ("--model", "model", str, "model: vae | iwae | cvae | m2 | completion | aae | avb | vaegan"),
    ("--prior", "prior", str, "p(z): standard-normal | gmm-ring (10 Gaussians on a ring, as in the AAE paper)"),
    ("--encoder", "encoder", str, "--model aae: gaussian | deterministic"),
    ("--phases", "phases", str, "--model aae: paper (reconstruction, discriminator, generator updates) | joint (one pass, two updates)"),
    ("--adversarial-weight", "adversarial_weight", _finite, "--model aae --phases joint: weight of the generator loss beside the reconstruction (default 1)"),
    ("--critic-hidden", "critic_hidden", _int_list, "adversarial models: hidden widths (mlp) or channels (conv) of the critic"),
    ("--adaptive-contrast", "adaptive_contrast", _on_off, "--model avb: on | off: contrast q(z|x) with a Gaussian of its moments (default on)"),
    ("--critic-steps", "critic_steps", int, "--model avb: updates of the adversary T per encoder and decoder update (default 1)"),
    ("--gamma", "gamma", _finite, "--model vaegan: weight of the feature-space reconstruction against the GAN loss in the decoder's update"),
    ("--equilibrium", "equilibrium", _finite, "--model vaegan: the equilibrium of the skip rule (discriminator loss, nats)"),
    ("--margin", "margin", _finite, "--model vaegan: the margin of the skip rule around --equilibrium"),
    ("--word-dropout", "word_dropout", _finite, "sequence models: probability of blanking the decoder's input at a step while training (Bowman et al.)"),
    ("--inject-missing", "inject_missing", _finite, "sequence models: share of observed values marked missing in each training batch (Donut)"),
    ("--conditional-prior", "conditional_prior", _on_off, "on | off: conditional models learn p(z|c) instead of N(0, I)"),
    ("--alpha", "alpha", _finite, "semi-supervised models: weight of the classification term"),
    ("--given", "given", str, "--model completion: the part of each training example given, the rest completed: "
     "1 | 2 | 3 (quadrants, as in Sohn et al. 2015) | random (1-3 random quadrants) | rect | pixels"),
    ("--k", "k", int, "importance samples per example in the IWAE training bound"),
    ("--gradient-estimator", "gradient_estimator", str,
     "IWAE gradient: reparam | dreg (doubly reparameterised: lower-variance encoder gradients)"),
    ("--arch", "arch", str, "mlp | conv"),
    ("--hidden", "hidden", _int_list, "hidden widths (mlp) or conv channels, e.g. 400 or 200,200"),
    ("--latent-dim", "latent_dim", int, "latent dimensions"),
    ("--latent-dim2", "latent_dim2", int, "dimensions of a second (top) stochastic layer; 0: one layer"),
    ("--hidden2", "hidden2", _int_list, "MLP widths between the two stochastic layers (default: half of --hidden)"),
    ("--activation", "activation", str, "relu | tanh | elu | gelu | silu | leaky_relu | softplus"),
    ("--likelihood", "likelihood", str, "bernoulli | gaussian | gaussian-fixed | discretized-logistic"),
    ("--beta", "beta", _finite, "weight of the KL term (beta-VAE)"),
    ("--kl-warmup", "kl_warmup", _finite, "epochs of KL warm-up"),
    ("--kl-schedule", "kl_schedule", str, "linear | cyclical"),
    ("--free-bits", "free_bits", _finite, "minimum KL per latent dimension in nats"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "batch size"),
    ("--lr", "lr", _finite, "Adam learning rate"),
    ("--lr-schedule", "lr_schedule", str, "none | cosine | exponential"),
    ("--lr-decay", "lr_decay", _finite, "per-epoch factor for --lr-schedule exponential"),
    ("--weight-decay", "weight_decay", _finite, "Adam weight decay"),
    ("--grad-clip", "grad_clip", _finite, "clip the gradient norm (0: off)"),
    ("--patience", "patience", int, "early stopping after this many epochs without a better validation ELBO (0: off)"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--weight-average", "weight_average", _finite, "decay of the weight moving average that is evaluated and saved (0: off)"),
    ("--matmul-precision", "matmul_precision", str, "highest (fp32) | high | medium (bf16 matmuls on AMX CPUs)"),
    ("--precision", "precision", str, "fp32 | bf16 | fp16: the training step's forward under autocast in bf16/fp16 "
     "(weights, gradients and loss terms stay fp32; fp16 needs a CUDA GPU)"),
    ("--cuda-graphs", "cuda_graphs", _on_off, "on | off: on a GPU, replay each training step as one CUDA graph (default on)"),
    ("--iw-samples", "iw_samples", int, "importance samples for the final test NLL (0: skip)"),
    ("--dist-backend", "dist_backend", str, "several processes (torchrun, --nproc): auto (NCCL on GPUs, gloo on CPUs) | gloo | nccl"),
    ("--checkpoint-every", "checkpoint_every", _finite, "seconds between checkpoints inside an epoch (0: at epoch ends only)"),
    ("--tensorboard", "tensorboard", str, "also log the training curves and sample grids to this folder for TensorBoard "
     "(needs pip install 'vaekit[tensorboard]'; --resume appends to it)"),
    ("--recon-loss", "recon_loss", str, "likelihood | perceptual (adds a frozen feature net's feature distance, DFC-VAE)"),
    ("--feature-net", "feature_net", str, "--recon-loss perceptual: a directory written by vaekit features (safetensors + architecture name), or a classifier exported to ONNX (.onnx)"),
    ("--perceptual-weight", "perceptual_weight", _finite, "weight of the perceptual term against the pixel log-likelihood"),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="vaekit", description="Variational autoencoders end to end.")
    p.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a VAE and write a run directory")
    for flag, key, typ, hlp in TRAIN_FLAGS:
        bare = {"nargs": "?", "const": True} if typ is _on_off else {}  # a bare on/off flag means on
        t.add_argument(flag, dest=key, type=typ, default=S, help=hlp, **bare)
    t.add_argument("--out", help="run directory to write (default: runs/<data>-<n>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--config", help="TOML file with [data], [model], [train] tables")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, default=None,
                   help="train data-parallel in N processes on this machine (as torchrun --standalone "
                        "--nproc_per_node N -m vaekit train ...): at most its GPUs, or its CPU cores")

    e = sub.add_parser("evaluate", help="evaluate a trained run on its test or validation split")
    e.add_argument("run_dir")
    e.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--iw-samples", type=int, default=0, help="importance samples for the NLL (e.g. 5000)")
    e.add_argument("--limit", type=int, default=None, help="only the first N examples of the split")
    e.add_argument("--batch-size", type=int, default=None, help="examples per evaluation batch")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--ais", action="store_true",
                   help="also -log p(x) by annealed importance sampling on the decoder alone (any model with a "
                        "decoder and a prior; slow, use --limit)")
    e.add_argument("--ais-steps", type=_positive_int, default=None, help="--ais: temperatures from p(z) to p(z) p(x|z) (default 500)")
    e.add_argument("--ais-chains", type=_positive_int, default=None, help="--ais: independent chains per example (default 16)")
    e.add_argument("--sample-quality", action="store_true",
                   help="also a classifier Frechet distance and precision/recall of samples against the split "
                        "(features of a reference classifier of the dataset; not Inception FID)")
    e.add_argument("--feature-net", default=None,
                   help="--sample-quality: the feature net (vaekit features, or an .onnx classifier); default: the dataset's cached reference")
    e.add_argument("--n-samples", type=int, default=None, help="--sample-quality: samples and examples (default min(N, 10000))")
    e.add_argument("--pr-k", type=int, default=3, help="--sample-quality: k of the k-NN manifolds of precision/recall")
    e.add_argument("--prior-mmd", action="store_true",
                   help="also the unbiased MMD^2 between the split's codes and as many prior draws (Gaussian kernels "
                        "at several bandwidths from the median distance): how well the aggregated posterior matches p(z)")
    e.set_defaults(func=cmd_evaluate)
    t.set_defaults(func=cmd_train)

    from .commands import register_all

    register_all(sub)
    return p


def _default_out(source: str) -> str:
    from pathlib import Path

    stem = Path(source).stem if ("/" in source or "." in source) else source
    i = 1
    while Path(f"runs/{stem}-{i}").exists():
        i += 1
    return f"runs/{stem}-{i}"


def cmd_train(args: argparse.Namespace) -> int:
    from .run import train

    opts = {key: getattr(args, key) for _, key, _, _ in TRAIN_FLAGS if hasattr(args, key)}
    source = opts.pop("source", None)
    if args.resume and not args.out:
        raise VaekitError("--resume needs --out RUN_DIR (the run to continue)")
    if source is None and not args.config and not args.resume:
        raise VaekitError("--data is required (a dataset name or a path), or give --config FILE.toml")
    out = args.out or _default_out(source or "run")
    if args.nproc is not None:
        from .launch import check_launch, launch, planned_config, strip_nproc

        cfg = planned_config(source, out=out, config_file=args.config, resume=args.resume, options=opts)
        check_launch(args.nproc, device=cfg.train.device, backend=cfg.train.dist_backend, batch_size=cfg.train.batch_size)
        from .training.trainer import check_config

        check_config(cfg.train)  # (e.g. --precision fp16 on CPUs) once here, not once per process
        if args.nproc > 1:
            argv = strip_nproc(args.argv)
            return launch(args.nproc, argv if args.out else [*argv, "--out", out], device=cfg.train.device)
    run = train(source, out=out, config_file=args.config, resume=args.resume, progress=not args.quiet, **opts)
    if int(os.environ.get("RANK", "0")) != 0:  # another process of a distributed run: rank 0 reports
        return 0
    hist = run.history
    result = {"run_dir": str(run.dir), "epochs": len(hist), "best_epoch": hist[-1]["best_epoch"] + 1 if hist else 0,
              "train_samples_per_s": sum(r["samples_per_s"] for r in hist) / max(1, len(hist)), "test": run.test}
    if args.json:
        print(json.dumps(result))
    else:
        t = run.test
        print(f"trained {result['epochs']} epochs ({result['train_samples_per_s']:.0f} examples/s); best epoch {result['best_epoch']}")
        if t:
            line = (f"test: -ELBO {-t['elbo']:.2f} nats (recon {t['recon']:.2f}, KL {t['kl']:.2f})" if "elbo" in t
                    else f"test: reconstruction {t['recon']:.2f} nats (no ELBO: no tractable q(z|x))")
            line += f", active units {t['active_units']}/{len(t['posterior_mean_var'])}"
            if "nll" in t:
                line += f", NLL {t['nll']:.2f} (K={t['iw_samples']})"
            print(line)
        print(f"run directory: {run.dir}")
        if (run.dir / "report.html").exists():
            print(f"report: {run.dir / 'report.html'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .report import evaluate_run

    if args.iw_samples < 0:
        raise VaekitError(f"--iw-samples must be >= 0 (0: the ELBO only), got {args.iw_samples}")
    if not args.ais and (args.ais_steps is not None or args.ais_chains is not None):
        raise VaekitError("--ais-steps and --ais-chains are options of --ais; add --ais")
    ais_steps = None
    if args.ais:
        from .ais import DEFAULT_STEPS

        ais_steps = args.ais_steps or DEFAULT_STEPS
    res = evaluate_run(args.run_dir, split=args.split, data_dir=args.data_dir, iw_samples=args.iw_samples or None,
                       limit=args.limit, batch_size=args.batch_size, seed=args.seed, device=args.device,
                       ais_steps=ais_steps, ais_chains=args.ais_chains, prior_mmd=args.prior_mmd)
    if args.sample_quality:
        from .apps.sample_quality import evaluate_sample_quality

        res.update(evaluate_sample_quality(args.run_dir, feature_net=args.feature_net, n_samples=args.n_samples,
                                           k=args.pr_k, split=args.split, data_dir=args.data_dir, seed=args.seed,
                                           device=args.device, log=lambda line: print(line, file=sys.stderr)))
    elif args.feature_net is not None or args.n_samples is not None:
        raise VaekitError("--feature-net and --n-samples are options of --sample-quality; add --sample-quality")
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            if k != "kl_per_dim":
                print(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}")
    return 0


RUN_FILES = ("config.json", "model.safetensors", "last.safetensors", "metrics.jsonl")


def _check_outputs_spare_inputs(args: argparse.Namespace) -> None:
    """An --out naming one of the command's own inputs would overwrite the user's data: refuse."""
    from pathlib import Path

    inputs = {"--input": "input", "--mask": "mask", "--data": "source", "--from": "src", "--to": "dst"}
    given = {f"the {flag} given": getattr(args, dest, None) for flag, dest in inputs.items()}
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:  # the run's own files and the file it was trained on are the user's too
        run_dir = Path(str(run_dir))
        given.update({f"the run's {name}": run_dir / name for name in RUN_FILES})
        given["the run's training data"] = _training_source(run_dir)
    for out_flag, out_dest in (("--out", "out"), ("--map-out", "map_out")):
        out = getattr(args, out_dest, None)
        if out is None:
            continue
        for what, path in given.items():
            if path is not None and Path(str(path)).resolve() == Path(str(out)).resolve():
                raise VaekitError(f"{out_flag} {out} is also {what}; write to another name "
                                  "(it would be overwritten)")


def _training_source(run_dir) -> str | None:
    """The data file a run was trained on, as its config.json records it (None: a built-in dataset, a file
    that is gone, or an unreadable config, which the command itself reports)."""
    from pathlib import Path

    try:
        source = json.loads((run_dir / "config.json").read_text())["data"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return source if isinstance(source, str) and Path(source).is_file() else None


def _other_rank_says_it(e: Exception) -> bool:
    """In a distributed run, a bad input is reported by rank 0 alone (every process finds it), and a
    lost peer by ``vaekit train --nproc`` (the launcher says which process stopped)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from .training.distributed import PeerLost

    if isinstance(e, PeerLost):
        return bool(os.environ.get("VAEKIT_LAUNCHER"))
    return e.exit_code == 2 and int(os.environ.get("RANK", "0")) != 0


def program() -> int:
    """The ``vaekit`` program (the console script and ``python -m vaekit``): subnormals flushed in
    every thread for the whole process (``numerics.flush_denormals_in_all_threads``: set before
    any parallel work, so the worker threads inherit it), then ``main``. ``main`` itself, called
    from Python, leaves the process's modes as it found them outside training and evaluation."""
    from .numerics import flush_denormals_in_all_threads

    flush_denormals_in_all_threads()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if extra:  # reported by the command's own parser, which knows its flags (see _Parser.error)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM before the trainer installs its own handler (loading data, building the model) stops
        # like Ctrl-C: one line and exit 130, not a bare kill; the trainer's handler saves first
        from .training.interrupt import raise_interrupt

        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        try:
            _check_outputs_spare_inputs(args)
            return args.func(args)
        except VaekitError as e:  # (a Ctrl-C while this reports is still caught below, not a traceback)
            if not _other_rank_says_it(e):
                print(f"vaekit {args.command}: error: {e}", file=sys.stderr)
            return e.exit_code
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) != 0:  # one process of a distributed run: rank 0 says it
            return 130
        saved = ("training progress is saved (continue with the same command and --resume)" if args.command == "train"
                 else "files are written whole or not at all")
        print(f"vaekit: interrupted; {saved}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # main() called from Python (tests, notebooks) leaves the process as it was
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
