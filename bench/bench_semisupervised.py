"""Semi-supervised classification with 100 labels (10 per class): M2, M1+M2, the same classifier
network on the labels alone, and scikit-learn's LabelSpreading on PCA features, over label draws.

Run alone on a quiet machine (from the repository root):

    .venv/bin/python bench/bench_semisupervised.py                       # MNIST + Fashion-MNIST, 5 draws, 30 min each
    .venv/bin/python bench/bench_semisupervised.py --datasets mnist --methods m2 --draws 5
    .venv/bin/python bench/bench_semisupervised.py --tiny                # smoke run: 1 draw, ~30 s per configuration

Protocol: ``vaekit.load_data(name, labels_per_class=10, label_seed=draw)`` keeps 10 labels per
class of the training split (54,000 images; the validation split, 6,000 labelled images, is the
same for every method and picks each method's best epoch / step); test error on the 10,000 test
images. Every configuration (one draw of one method, and M1 once per dataset) trains under
``--budget-min`` minutes of wall time: an epoch that would end past the budget is not started.
Results accumulate in ``--work``/results.jsonl (a configuration already there is not re-run, so
an interrupted benchmark continues); the table (mean +- sd over draws) goes to ``--out`` and stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vaekit  # noqa: E402
from vaekit.apps.classify import predict_proba  # noqa: E402
from vaekit.data.datasets import load_data  # noqa: E402
from vaekit.models import ModelConfig, build_model  # noqa: E402
from vaekit.training.trainer import read_history  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
METHODS = ("m2", "m1m2", "classifier", "labelspreading")
# M2 as Kingma et al. 2014 (one hidden layer of 500 softplus units, 50 latent dims), with the
# classification weight and labelled share chosen on short MNIST runs (15 epochs; see models/m2.py).
M2 = dict(model="m2", hidden=[500], latent_dim=50, activation="softplus", alpha=10.0, lr=1e-3, batch_size=128,
          extra={"labelled_per_batch": 0.3})
# M1 as Kingma et al.: two hidden layers of 600 softplus units, 50 latent dims; on the grey images
# (Bernoulli cross-entropy), the same inputs M2 then reads through it (a binarized M1 would see
# grey images only at M2 time).
M1 = dict(model="vae", hidden=[600, 600], latent_dim=50, activation="softplus", lr=1e-3, batch_size=128)
ANCHORS = {("mnist", "m2"): "11.97 +- 1.71 (Kingma et al. 2014)", ("mnist", "m1m2"): "3.33 +- 0.14 (Kingma et al. 2014)"}
NAMES = {"m2": "M2", "m1m2": "M1+M2", "classifier": "same classifier, 100 labels only",
         "labelspreading": "LabelSpreading (kNN) on PCA-50"}


class OutOfTime(Exception):
    """Raised by the budget callback after an epoch is saved, when the next would end too late."""


def train_budgeted(ds: str, out: Path, budget_s: float, **options) -> dict:
    """vaekit.train on dataset ``ds`` until the next epoch would end past ``budget_s`` seconds
    (constant learning rate; the trainer keeps the best validation epoch in out/model.safetensors).
    Returns wall time, epochs, best epoch (1-based), mean examples/s and the epoch records."""
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()

    def budget(trainer, rec):
        spent = time.perf_counter() - t0
        if spent + spent / (rec["epoch"] + 1) > budget_s:
            raise OutOfTime

    try:
        vaekit.train(ds, out=out, epochs=100000, callbacks=[budget], progress=False, evaluate_test=False,
                     figures=False, **options)
    except OutOfTime:
        pass
    wall = time.perf_counter() - t0
    rows = read_history(out)
    return {"train_s": wall, "epochs": len(rows), "best_epoch": rows[-1]["best_epoch"] + 1,
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in rows])), "rows": rows}


def test_error(run_dir: Path, data_dir: str) -> float:
    """Error (%) of the run's q(y|x) on its test split."""
    from vaekit.apps.common import open_run, run_inputs

    run = open_run(run_dir, device="cpu")
    s = run_inputs(run, split="test", data_dir=data_dir)
    pred = predict_proba(run.model, s.x).argmax(1)
    return 100.0 * float((pred != s.y).double().mean())


def run_m2(ds: str, data_dir: str, draw: int, budget_s: float, work: Path, features: Path | None = None) -> dict:
    """One draw of M2 (or of M1+M2 on the M1 run ``features``)."""
    out = work / ds / (f"m1m2-{draw}" if features else f"m2-{draw}")
    opts = dict(M2, data_dir=data_dir, labels_per_class=10, label_seed=draw, seed=draw)
    if features is not None:
        opts["features"] = str(features)
    res = train_budgeted(ds, out, budget_s, **opts)
    best = res.pop("rows")[res["best_epoch"] - 1]
    return {"test_error": test_error(out, data_dir), "val_accuracy": best.get("val_accuracy"), **res}


def ensure_m1(ds: str, data_dir: str, budget_s: float, work: Path, log: dict) -> Path:
    """M1 for ``ds`` (unsupervised: no labels, so one M1 serves every draw), trained once."""
    out = work / ds / "m1"
    key = f"{ds}/m1"
    if key not in log:
        res = train_budgeted(ds, out, budget_s, data_dir=data_dir, seed=0, **M1)
        best = res.pop("rows")[res["best_epoch"] - 1]
        log[key] = {"dataset": ds, "method": "m1", "draw": 0, "val_elbo": best["val_elbo"], **res}
        _save_log(work, log)
    return out


def run_classifier(ds: str, data_dir: str, draw: int, budget_s: float, steps: int = 3000) -> dict:
    """M2's classifier network (same sizes and activation) trained on the 100 labelled images alone:
    full-batch Adam on the cross-entropy, keeping the step with the best validation accuracy."""
    t0 = time.perf_counter()
    d = load_data(ds, data_dir=data_dir, labels_per_class=10, label_seed=draw, seed=draw, download=False)
    torch.manual_seed(draw)
    net = build_model(ModelConfig(**{k: v for k, v in M2.items() if k not in ("lr", "batch_size")}), d.spec).classifier
    lab = d.train.y != -1
    x, y = d.train.x[lab], d.train.y[lab]
    opt = torch.optim.Adam(net.parameters(), lr=M2["lr"])
    best, best_state, step = -1.0, None, 0
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                acc = float((net(d.val.x).argmax(1) == d.val.y).double().mean())
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
            if time.perf_counter() - t0 > budget_s:
                break
    net.load_state_dict(best_state)
    with torch.no_grad():
        err = 100.0 * float((net(d.test.x).argmax(1) != d.test.y).double().mean())
    return {"test_error": err, "val_accuracy": best, "train_s": time.perf_counter() - t0, "epochs": step}


def run_labelspreading(ds: str, data_dir: str, draw: int, max_unlabelled: int | None) -> dict:
    """scikit-learn LabelSpreading (kNN graph, k = 10) on 50 PCA components of the training images."""
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    t0 = time.perf_counter()
    d = load_data(ds, data_dir=data_dir, labels_per_class=10, label_seed=draw, seed=draw, download=False)
    x, y = d.train.x.flatten(1).numpy(), d.train.y.numpy()
    if max_unlabelled is not None:  # smoke runs only: a subset of the unlabelled images
        keep = np.r_[np.flatnonzero(y != -1), np.flatnonzero(y == -1)[:max_unlabelled]]
        x, y = x[keep], y[keep]
    pca = PCA(50, random_state=draw).fit(x)
    ls = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=100).fit(pca.transform(x), y)
    with np.errstate(invalid="ignore"):  # rows reached by no label are 0/0: counted below
        proba = ls.predict_proba(pca.transform(d.test.x.flatten(1).numpy()))
    # What ls.predict returns: argmax of each row, i.e. the first class for a row of NaNs (a test image
    # whose 10 nearest training images lie in parts of the kNN graph that no labelled image reaches).
    pred = ls.classes_[np.argmax(proba, axis=1)]
    unreached = np.isnan(proba).any(axis=1)
    return {"test_error": 100.0 * float((pred != d.test.y.numpy()).mean()), "train_s": time.perf_counter() - t0,
            "unreached_share": float(unreached.mean()),
            "test_error_reached": 100.0 * float((pred[~unreached] != d.test.y.numpy()[~unreached]).mean())}


def _load_log(work: Path) -> dict:
    path = work / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {r["key"]: r for r in rows}


def _save_log(work: Path, log: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.jsonl").write_text("".join(json.dumps({"key": k, **v}) + "\n" for k, v in log.items()))


def _mean_sd(v: list[float]) -> str:
    if not v:
        return "-"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return f"{np.mean(v):.2f} +- {sd:.2f}" if math.isfinite(sd) else f"{v[0]:.2f}"


def table(log: dict, args: argparse.Namespace) -> str:
    """The markdown report of every result in ``log``: machine, command, one row per dataset and method."""
    lines = [f"# Semi-supervised classification, 100 labels ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_semisupervised.py', *sys.argv[1:]])}`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads); budget {args.budget_min} min per configuration (this "
             "invocation; results of earlier ones are included).", "",
             "| data | method | test error % (mean +- sd) | draws | train min / draw | epochs / steps | published |",
             "|---|---|---|---|---|---|---|"]
    datasets = [d for d in ("mnist", "fashion-mnist") if any(r["dataset"] == d for r in log.values())]
    for ds in datasets:  # every result so far, whichever datasets and methods this invocation ran
        m1 = log.get(f"{ds}/m1")
        for method in METHODS:
            rows = [r for r in log.values() if r["dataset"] == ds and r["method"] == method]
            if not rows:
                continue
            errs = [r["test_error"] for r in rows]
            mins = np.mean([r["train_s"] for r in rows]) / 60
            ep = np.mean([r.get("epochs", 0) for r in rows])
            lines.append(f"| {ds} | {NAMES[method]} | {_mean_sd(errs)} | {len(rows)} | {mins:.1f} | {ep:.0f} | "
                         f"{ANCHORS.get((ds, method), '')} |")
        ls_rows = [r for r in log.values() if r["dataset"] == ds and r["method"] == "labelspreading"
                   and "unreached_share" in r]
        if ls_rows:
            lines.append(f"| {ds} | (LabelSpreading: share of test images no label reaches, predicted as the first "
                         f"class) | {_mean_sd([100 * r['unreached_share'] for r in ls_rows])} % | {len(ls_rows)} | | | |")
            lines.append(f"| {ds} | (LabelSpreading: error on the test images a label reaches) | "
                         f"{_mean_sd([r['test_error_reached'] for r in ls_rows])} | {len(ls_rows)} | | | |")
        if m1 is not None:
            lines.append(f"| {ds} | (M1 for M1+M2, trained once) | val ELBO {m1['val_elbo']:.2f} | - | "
                         f"{m1['train_s'] / 60:.1f} | {m1['epochs']} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--draws", type=int, default=5, help="label draws (label seeds 0..N-1)")
    p.add_argument("--budget-min", type=float, default=30.0, help="wall minutes per configuration (<= 30)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder holding mnist/ and fashion-mnist/")
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "semisupervised"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "semisupervised.md"))
    p.add_argument("--tiny", action="store_true",
                   help="smoke run: 1 draw, 0.5 min per configuration, 5,000 unlabelled images for LabelSpreading; "
                        "writes under bench/out/ only")
    args = p.parse_args(argv)
    args.datasets, args.methods = args.datasets.split(","), args.methods.split(",")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    max_unl = None
    if args.tiny:
        args.draws, args.budget_min, max_unl = 1, min(args.budget_min, 0.5), 5000
        args.work, args.out = args.work + "-tiny", str(ROOT / "bench" / "out" / "semisupervised-tiny.md")
    work, budget_s = Path(args.work), 60.0 * args.budget_min
    log = _load_log(work)
    for ds in args.datasets:
        data_dir = str(Path(args.data_dir) / ds)
        for draw in range(args.draws):
            for method in args.methods:
                key = f"{ds}/{method}/{draw}"
                if key in log:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {key} ...", file=sys.stderr, flush=True)
                if method in ("m2", "m1m2"):
                    feats = ensure_m1(ds, data_dir, budget_s, work, log) if method == "m1m2" else None
                    res = run_m2(ds, data_dir, draw, budget_s, work, feats)
                elif method == "classifier":
                    res = run_classifier(ds, data_dir, draw, budget_s)
                else:
                    res = run_labelspreading(ds, data_dir, draw, max_unl)
                log[key] = {"dataset": ds, "method": method, "draw": draw, **res}
                _save_log(work, log)
                print(f"    test error {res['test_error']:.2f}% in {res['train_s'] / 60:.1f} min", file=sys.stderr)
    text = table(log, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
