"""Imputation quality of vaekit against mean imputation and scikit-learn's KNNImputer.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_impute.py [--epochs 50] [--n-test 500] [--table satimage-2]

Settings (errors on the missing entries only):
- MNIST grey levels: a Bernoulli VAE (MLP 784-HIDDEN-LATENT, default 784-512-512-32, 50 epochs) trained on the MNIST training set by
  this script (cached under bench/out/), imputing the first N test images with (i) 50% of the pixels
  missing at random and (ii) the bottom half (rows 14-27) missing. RMSE and MAE in pixel units [0, 1].
- A real table (ODDS .mat, default satimage-2: 5803 x 36 satellite spectral values): 80% of the
  rows train a Gaussian VAE, the other 20% get 20% of their values removed at random. RMSE in
  standardised units (per-feature z-scores with the training mean/std).
Baselines are fit on the same training rows: mean imputation (training column means) and
KNNImputer (k=5, nan-Euclidean distances). One JSON object goes to bench/out/impute.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"


def errors(filled: np.ndarray, truth: np.ndarray, miss: np.ndarray) -> dict:
    d = (np.asarray(filled, np.float64) - truth)[miss]
    return {"rmse": float(np.sqrt((d ** 2).mean())), "mae": float(np.abs(d).mean())}


def cached_run(name: str, source: str, **opts):
    """Train once into bench/out/<name> (reused while config.json and model.safetensors exist)."""
    import vaekit

    out = OUT / name
    if not (out / "model.safetensors").exists():
        t = time.time()
        vaekit.train(source, out=out, progress=False, evaluate_test=False, figures=False, **opts)
        print(f"trained {name} in {time.time() - t:.0f} s", flush=True)
    from vaekit.apps.common import open_run

    return open_run(out, device="cpu")


def compare(key: str, run, x_model: np.ndarray, truth: np.ndarray, miss: np.ndarray, train: np.ndarray,
            methods: list, to_units, knn_k: int = 5) -> dict:
    """Every method's error on one masked test set. x_model: model-unit inputs (N, *shape);
    truth/train/miss: flat (N, D) arrays in the units the errors are measured in."""
    from sklearn.impute import KNNImputer

    from vaekit.apps.impute import DEFAULT_CHAINS, impute

    res = {}
    n = len(truth)
    masked = truth.copy()
    masked[miss] = np.nan
    res["mean"] = errors(np.where(miss, train.mean(0), truth), truth, miss)
    cache = OUT / f"knn-{key}-k{knn_k}.npz"  # the KNN fill is slow (minutes) and never changes
    if cache.exists() and np.array_equal(np.load(cache)["miss"], miss):
        knn, seconds = np.load(cache)["fill"], float(np.load(cache)["seconds"])
    else:
        t = time.time()
        knn = KNNImputer(n_neighbors=knn_k).fit(train).transform(masked)
        seconds = time.time() - t
        np.savez(cache, fill=knn, miss=miss, seconds=seconds)
    res["knn"] = {**errors(knn, truth, miss), "seconds": seconds}
    print("  knn", res["knn"], flush=True)
    xm = torch.from_numpy(x_model).float()
    mm = torch.from_numpy(miss.reshape(xm.shape))
    for method, iters in methods:
        t = time.time()
        f = impute(run.model, torch.where(mm, float("nan"), xm), method=method, iters=iters, seed=0)
        assert torch.equal(f[~mm], xm[~mm]), "observed values changed"
        key = f"vaekit {method} ({iters})" if method == "importance" else f"vaekit {method} ({DEFAULT_CHAINS}x{iters})"
        res[key] = {**errors(to_units(f.numpy()).reshape(n, -1), truth, miss), "seconds": time.time() - t}
        print(" ", key, res[key], flush=True)
    return res


def bench_mnist(args, methods) -> dict:
    from vaekit.run import load_run_data

    name = f"impute-mnist-h{'-'.join(map(str, args.hidden))}-z{args.latent_dim}-e{args.epochs}"
    run = cached_run(name, "mnist", data_dir=str(args.data_dir / "mnist"), epochs=args.epochs, hidden=args.hidden,
                     latent_dim=args.latent_dim, likelihood="bernoulli", seed=0)
    d = load_run_data(run.config)
    train = d.train.x.flatten(1).numpy().astype(np.float64)
    x = d.test.x[:args.n_test].numpy()
    truth = x.reshape(len(x), -1).astype(np.float64)
    rng = np.random.default_rng(0)
    bottom = np.zeros((len(x), 28, 28), bool)
    bottom[:, 14:] = True
    out = {"run": name}
    for setting, miss in (("mnist 50% at random", rng.random(truth.shape) < 0.5),
                          ("mnist bottom half", bottom.reshape(len(x), -1))):
        print(setting, flush=True)
        key = f"mnist-{'random' if 'random' in setting else 'bottom'}-n{len(x)}"
        out[setting] = compare(key, run, x, truth, miss, train, methods, lambda a: a)
    return out


def bench_table(args, methods) -> dict:
    import scipy.io

    from vaekit.data.datasets import load_inputs

    X = scipy.io.loadmat(str(args.data_dir / "odds" / f"{args.table}.mat"))["X"].astype(np.float64)
    perm = np.random.default_rng(0).permutation(len(X))
    cut = int(0.8 * len(X))
    tr, te = X[np.sort(perm[:cut])], X[np.sort(perm[cut:])]
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / f"{args.table}-train.npy", tr)
    np.save(OUT / f"{args.table}-heldout.npy", te)
    name = f"impute-{args.table}-h{'-'.join(map(str, args.table_hidden))}-z{args.table_latent}-e{args.table_epochs}"
    run = cached_run(name, str(OUT / f"{args.table}-train.npy"), epochs=args.table_epochs, hidden=args.table_hidden,
                     latent_dim=args.table_latent, test_fraction=0.0, seed=0)
    std = run.source["standardize"]
    mean, sd = np.asarray(std["mean"]), np.asarray(std["std"])
    z_tr, z_te = (tr - mean) / sd, (te - mean) / sd  # errors in standardised units
    x_model = load_inputs(str(OUT / f"{args.table}-heldout.npy"), run.spec, run.source).x.numpy()
    miss = np.random.default_rng(1).random(te.shape) < 0.2
    print(f"{args.table} 20% at random", flush=True)
    res = compare(args.table, run, x_model, z_te, miss, z_tr, methods, lambda a: a.astype(np.float64))
    return {"run": name, "table": args.table, "shape": list(X.shape), "train_rows": len(tr), "heldout_rows": len(te),
            f"{args.table} 20% at random": res}


def main() -> None:
    ints = lambda s: [int(v) for v in s.split(",")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--hidden", type=ints, default=[512, 512])
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--table", default="satimage-2")
    ap.add_argument("--table-epochs", type=int, default=200)
    ap.add_argument("--table-hidden", type=ints, default=[128, 128])
    ap.add_argument("--table-latent", type=int, default=8)
    ap.add_argument("--methods", default="hmc:100,mwg:250,importance:1000,pseudo-gibbs:250")
    ap.add_argument("--only", choices=["mnist", "table"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [(m.split(":")[0], int(m.split(":")[1])) for m in args.methods.split(",")]
    if not (args.data_dir / "mnist").exists():
        raise SystemExit(f"skipped: no data at {args.data_dir} (pass --data-dir)")
    res = {"command": "bench/bench_impute.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
           "date": time.strftime("%Y-%m-%d")}
    if args.only != "table":
        res["mnist"] = bench_mnist(args, methods)
    if args.only != "mnist":
        res["table"] = bench_table(args, methods)
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.only}" if args.only else ""
    (OUT / f"impute{suffix}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
