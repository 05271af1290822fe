"""Tabular anomaly detection on the ODDS tables: VAEAnomalyDetector vs pyod's VAE, both at defaults.

Protocol (as ODDS / ADBench's unsupervised setting): fit on ALL rows of a table without labels,
score the same rows, AUROC against the labels (1 = outlier). Same protocol and rows for both.
pyod runs in its own virtual environment, ``bench/.envs/pyod`` (made here on first use with
``pip install torch==2.13.0 pyod tqdm``; pyod needs tqdm but does not declare it), in a subprocess:
it is not a vaekit dependency. pyod's only changed setting is verbose=0 (printing).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_odds.py [--sets cardio,glass] [--threads 1]
        [--json bench/out/odds.json] [--pyod-from bench/out/odds.json]

``--pyod-from`` reuses pyod's AUROC and seconds per set from an earlier ``--json`` output instead of
re-running pyod (its scores depend only on the data and its own seed, not on vaekit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from vaekit.sklearn import VAEAnomalyDetector

ROOT = Path(__file__).resolve().parent
DATA = Path(os.environ.get("VAEKIT_SHARED_DATA", ROOT.parents[1] / "shared" / "data")) / "odds"
ENV = ROOT / ".envs" / "pyod"
PYOD_WORKER = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from pyod.models.vae import VAE
X = np.load(sys.argv[1])
det = VAE(verbose=0).fit(X)
np.save(sys.argv[2], det.decision_scores_)
"""


def ensure_pyod_env() -> Path:
    """The pyod venv's python, creating the venv (pinned torch) when it is missing."""
    py = ENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "pyod", "tqdm"], check=True)
    return py


def load_tables(names: list[str] | None) -> dict[str, tuple[np.ndarray, np.ndarray] | str]:
    """name -> (X float64 (n, d), y int (n,)) or a note saying why the table was skipped."""
    from scipy.io import loadmat

    out: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    files = sorted(DATA.glob("*.mat")) + sorted((DATA / "adbench").glob("*.npz"))
    for f in files:
        name = f.stem.split("_", 1)[-1] if f.suffix == ".npz" else f.stem
        if names and name not in names:
            continue
        try:
            d = loadmat(f) if f.suffix == ".mat" else np.load(f, allow_pickle=False)
            out[name] = (np.asarray(d["X"], dtype=np.float64), np.asarray(d["y"]).astype(int).ravel())
        except NotImplementedError:  # MATLAB v7.3 (HDF5) files need h5py; none of ours are
            out[name] = "skipped: MATLAB v7.3 file"
    return out


def pyod_scores(py: Path, X: np.ndarray, threads: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        xin, sout = Path(tmp) / "x.npy", Path(tmp) / "s.npy"
        np.save(xin, X)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([str(py), "-c", PYOD_WORKER, str(xin), str(sout), str(threads)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return np.load(sout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=None, help="comma-separated table names (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pyod", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--pyod-from", default=None, help="reuse pyod results from an earlier --json file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not DATA.exists():
        print(f"skipped: {DATA} not found")
        return 0
    cached = {}
    if args.pyod_from:
        cached = {r["set"]: r for r in json.loads(Path(args.pyod_from).read_text())["rows"]}
    py = None if args.no_pyod or args.pyod_from else ensure_pyod_env()
    rows = []
    for name, tab in load_tables(args.sets.split(",") if args.sets else None).items():
        if isinstance(tab, str):
            print(f"{name}: {tab}")
            continue
        X, y = tab
        t0 = time.perf_counter()
        det = VAEAnomalyDetector(random_state=args.seed, device="cpu").fit(X)
        ours = roc_auc_score(y, -det.score_samples(X))
        t1 = time.perf_counter()
        theirs = roc_auc_score(y, pyod_scores(py, X, args.threads)) if py else float("nan")
        t2 = time.perf_counter()
        if name in cached:
            theirs, t2 = cached[name]["pyod_vae"], t1 + cached[name]["pyod_s"]
        rows.append({"set": name, "n": len(X), "d": X.shape[1], "outliers": int(y.sum()), "likelihood": det.likelihood_,
                     "vaekit": float(ours), "pyod_vae": float(theirs), "vaekit_s": round(t1 - t0, 1),
                     "pyod_s": round(t2 - t1, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| set | n | d | outliers | vaekit likelihood | vaekit AUROC | pyod VAE AUROC | vaekit s | pyod s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['d']} | {r['outliers']} | {r['likelihood']} | {r['vaekit']:.4f} | "
              f"{r['pyod_vae']:.4f} | {r['vaekit_s']} | {r['pyod_s']} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("vaekit", "pyod_vae")}
    print(f"| **mean** | | | | | **{mean['vaekit']:.4f}** | **{mean['pyod_vae']:.4f}** | | |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": mean}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
