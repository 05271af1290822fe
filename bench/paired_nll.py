"""Paired NLL check of a run in progress: its current best weights against an earlier weights
file, with the same importance samples, on the first N test images.

    OMP_NUM_THREADS=2 .venv/bin/python bench/paired_nll.py RUN_DIR EARLIER.safetensors [--n 1000]
        [--k 5000] [--data-dir DIR]

Both NLL estimates (K importance samples per image, ``vaekit.metrics.per_example_scores``) use
the same seeded draws, so their per-image difference has far less noise than either estimate:
a quick way to see whether continued training still lowers the NLL before paying for the full
10,000-image evaluation. The first images are not a random sample of the test set (the first
1,000 MNIST test digits are ~0.45 nats easier than the whole set for our IWAE runs), so read the
difference, not the level. Prints one JSON object: both means and the mean difference with its
standard error (nats).
"""

from __future__ import annotations

import argparse
import json
import math
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("earlier", help="a weights file of the same model (e.g. a copy of an earlier model.safetensors)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()

    from safetensors.torch import load_file

    from vaekit.metrics import per_example_scores
    from vaekit.run import load, load_run_data, read_config

    cfg, _, _ = read_config(a.run_dir)
    x = load_run_data(cfg, a.data_dir).test.x[: a.n]
    model = load(a.run_dir)
    t0 = time.perf_counter()
    nll = {"current": per_example_scores(model, x, kind="nll", iw_samples=a.k)}
    model.load_state_dict(load_file(a.earlier))
    nll["earlier"] = per_example_scores(model, x, kind="nll", iw_samples=a.k)
    d = nll["current"] - nll["earlier"]
    print(json.dumps({"run": a.run_dir, "earlier": a.earlier, "n": len(x), "k": a.k,
                      "current": round(float(nll["current"].mean()), 3), "earlier_nll": round(float(nll["earlier"].mean()), 3),
                      "diff": round(float(d.mean()), 3), "diff_std_err": round(float(d.std() / math.sqrt(len(x))), 3),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
