"""One-class MNIST with VAEAnomalyDetector at its DEFAULT settings.

For each digit d: fit on the training images of d only (flattened 784-dim grey levels in [0, 1]),
score the full 10k test set (d normal, the other digits anomalous), AUROC per digit and the mean.
The same fitted model is scored with every score variant, so the table compares scores, not
models: "excess" (the default: (-ELBO - H) / C, see vaekit.apps.anomaly), "elbo", "nll" (K = 8
importance samples), "recon", "elbo-H" (-ELBO minus the input's Bernoulli entropy only), and
"elbo-H-C/4" (a likelihood ratio against the i.i.d. background with a hand-picked weight 1/4,
for comparison; not offered in the library because its weight was tuned here).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_anomaly_mnist.py [--digits 0,1,...] [--test-limit N]
        [--threads 1] [--json bench/out/anomaly_mnist.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from _mnist import load_mnist  # noqa: E402

from vaekit.apps.anomaly import SCORES, complexity, crn_terms, excess_score  # noqa: E402
from vaekit.sklearn import VAEAnomalyDetector  # noqa: E402

DATA = Path(os.environ.get("VAEKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mnist"
VARIANTS = (*SCORES, "elbo-H", "elbo-H-C/4")


def variant_scores(det: VAEAnomalyDetector, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every score variant (higher = more anomalous) from one fitted detector and one pass."""
    z = torch.from_numpy(x.astype(np.float64))
    t = crn_terms(det.model_, z, samples=det.n_samples, seed=0)
    out = {k: t[k].numpy() for k in ("elbo", "nll", "recon")}
    out["excess"] = excess_score(z, t, det.correction_, det.model_).numpy()
    out["elbo-H"] = (t["elbo"] - t["entropy"]).numpy()
    out["elbo-H-C/4"] = out["elbo-H"] - 0.25 * complexity(z, t, det.correction_.rate).numpy()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--test-limit", type=int, default=None, help="score only a seeded subset of the test set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (DATA / "t10k-images-idx3-ubyte.gz").exists():
        print(f"skipped: MNIST not found in {DATA}")
        return 0
    xtr, ytr = load_mnist(DATA, "train")
    xte, yte = load_mnist(DATA, "test")
    if args.test_limit:
        keep = np.random.default_rng(0).choice(len(xte), args.test_limit, replace=False)
        xte, yte = xte[keep], yte[keep]
    rows = []
    for d in (int(v) for v in args.digits.split(",")):
        t0 = time.perf_counter()
        det = VAEAnomalyDetector(random_state=args.seed, device="cpu").fit(xtr[ytr == d])
        fit_s = time.perf_counter() - t0
        s = variant_scores(det, xte)
        anomalous = (yte != d).astype(int)
        row = {"digit": d, "n_train": int((ytr == d).sum()), "epochs": det.n_epochs_, "fit_s": round(fit_s, 1),
               **{k: float(roc_auc_score(anomalous, v)) for k, v in s.items()}}
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"\nsizes: {det.sizes_}\n")
    print("| digit | " + " | ".join(VARIANTS) + " | epochs | fit s |")
    print("|---|" + "---|" * (len(VARIANTS) + 2))
    for r in rows:
        print(f"| {r['digit']} | " + " | ".join(f"{r[k]:.4f}" for k in VARIANTS) + f" | {r['epochs']} | {r['fit_s']} |")
    means = {k: float(np.mean([r[k] for r in rows])) for k in VARIANTS}
    print("| **mean** | " + " | ".join(f"**{means[k]:.4f}**" for k in VARIANTS) + " | | |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": means, "sizes": det.sizes_}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
