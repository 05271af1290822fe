"""Stream anomaly detection (issue 20): vaekit's sequence VAE against PCA and IsolationForest on the
same windows, on SMD (4 machines) and MSL (27 channels), and the Donut ablation on the two web KPIs.

Protocol, for every dataset and every detector:
- windows of ``--window`` rows (training stride ``--stride``); detection scores every test row by the
  window that ends on it (the first window for the rows before it), as an online detector would;
- training on the training series only, its last ``--val-fraction`` held out as validation; the
  threshold is label-free: the (1 - ``--contamination``) quantile of the validation rows' scores;
- metrics per dataset on all its test rows pooled (SMD: 4 machines, MSL: 27 channels, one model per
  entity): AUC-PR (average precision), AUROC, F1 at the label-free threshold WITHOUT point adjustment,
  and the point-adjusted F1 that papers print (OmniAnomaly: SMD 0.96, MSL 0.90; point adjustment
  rewards even random scores), plus the best F1 over all thresholds;
- vaekit: ``--model vae --arch gru`` (the defaults of ``vaekit train --window``: hidden 128, latent 20
  unless given), trained for ``--budget-min`` minutes per dataset in all (split evenly between the
  entities, whole epochs); PCA: reconstruction error with the components explaining 95% of the
  training windows' variance; IsolationForest: scikit-learn's defaults (100 trees), score = -score_samples.

Donut (``--datasets donut``): each KPI CSV (timestamp,value,label) split in time 49/21/30 (train /
validation / test, as the Donut paper does); best F1 and AUC-PR on the test part for the plain windowed
VAE and with each Donut ingredient: the modified ELBO (rows labelled anomalous left out of training:
``--mask-anomalies``), missing-data injection (``--inject-missing 0.01``), MCMC imputation at test
time (10 iterations), and all three.

    python bench/bench_stream.py --data-dir ../shared/data --budget-min 12
    python bench/bench_stream.py --datasets smd --entities 1 --budget-min 0.3 --rows 3000   # smoke

Writes bench/results/stream.md (appends) and bench/out/stream.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _budget import fit_within  # noqa: E402
from vaekit.apps.stream import point_scores, score_series, stream_metrics  # noqa: E402
from vaekit.data.sequences import apply_scaler, cut_windows, load_series_data, read_series  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
DETECTORS = ("vaekit", "pca", "iforest")


# -- the entities of each dataset: (name, training series path, test values (T, D), test labels (T,)) --
def smd_entities(root: Path, limit: int | None, rows: int | None):
    names = sorted(p.name[:-len("_train.npy")] for p in (root / "smd").glob("machine-*_train.npy"))[:limit]
    for n in names:
        test = np.load(root / "smd" / f"{n}_test.npy").astype(np.float64)
        lab = np.load(root / "smd" / f"{n}_test_label.npy").astype(np.int64)
        yield n, root / "smd" / f"{n}_train.npy", test[:rows], lab[:rows]


def msl_entities(root: Path, limit: int | None, rows: int | None):
    import csv

    with open(root / "msl" / "labeled_anomalies.csv") as f:
        meta = [r for r in csv.DictReader(f) if r.get("spacecraft", "MSL") == "MSL"]
    for r in sorted(meta, key=lambda r: r["chan_id"])[:limit]:
        ch = r["chan_id"]
        test = np.load(root / "msl" / "test" / f"{ch}.npy").astype(np.float64)
        lab = np.zeros(len(test), np.int64)
        for a, b in json.loads(r["anomaly_sequences"]):
            lab[a:b + 1] = 1
        yield ch, root / "msl" / "train" / f"{ch}.npy", test[:rows], lab[:rows]


# -- detectors ---------------------------------------------------------------------------------------
def vaekit_opts(args, epochs: int = 10_000, **extra) -> dict:
    return {"model": "vae", "arch": "gru", "hidden": args.hidden, "latent_dim": args.latent_dim, "epochs": epochs,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, **extra}


def train_vaekit(data, args, budget_s: float, epochs: int = 10_000, **extra):
    """vaekit's model trained for ``budget_s`` seconds in whole epochs, or for exactly ``epochs`` epochs
    when the budget is infinite."""
    from vaekit.config import make_config
    from vaekit.models import build_model
    from vaekit.training.trainer import Trainer

    cfg = make_config(None, **vaekit_opts(args, epochs, **extra))
    torch.manual_seed(args.seed)
    trainer = Trainer(build_model(cfg.model, data.spec), data, cfg.train, None, progress=False)
    return fit_within(trainer, budget_s, whole_epochs=True)


def window_matrix(values: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened windows with missing values as 0 (the baselines take no mask): (N, W*D), starts."""
    x, _, starts = cut_windows(values, window, stride)
    return x.flatten(1).numpy().astype(np.float64), starts


def baseline_scores(kind: str, train_vals: np.ndarray, score_vals: list[np.ndarray], args) -> tuple[list[np.ndarray], float]:
    """Point scores of each series in ``score_vals`` from a detector fitted on ``train_vals``' windows."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    t0 = time.perf_counter()
    xtr, _ = window_matrix(train_vals, args.window, args.stride)
    if kind == "pca":
        model = PCA(n_components=0.95, svd_solver="full", random_state=args.seed).fit(xtr)

        def score(x):
            return ((model.inverse_transform(model.transform(x)) - x) ** 2).sum(1)
    else:
        model = IsolationForest(random_state=args.seed).fit(xtr)

        def score(x):
            return -model.score_samples(x)
    fit_s = time.perf_counter() - t0
    out = []
    for vals in score_vals:
        xs, starts = window_matrix(vals, args.window, 1)
        win = score(xs)
        out.append(point_scores(np.repeat(win[:, None], args.window, 1), starts, len(vals), args.window))
    return out, fit_s


def run_entity(name, train_path, test_vals, test_lab, args, budget_s, detectors, **vaekit_extra) -> dict:
    """Scores of the validation rows (for the threshold) and the test rows, per detector."""
    data = load_series_data(train_path, window=args.window, stride=args.stride, val_fraction=args.val_fraction,
                            test_fraction=0.0, label_column=None)
    raw = read_series(train_path).values
    a = data.source["split_rows"]["train"]
    sc = data.source["scaler"]
    train_vals, val_vals = apply_scaler(raw[:a], sc), apply_scaler(raw[a:], sc)
    test_vals = apply_scaler(test_vals, sc)
    res = {}
    for det in detectors:
        if det == "vaekit":
            model, stats = train_vaekit(data, args, budget_s, **vaekit_extra)
            t0 = time.perf_counter()
            val_s = score_series(model, val_vals, args.window, mcmc=args.mcmc).point
            test_s = score_series(model, test_vals, args.window, mcmc=args.mcmc).point
            stats["score_s"] = round(time.perf_counter() - t0, 1)
        else:
            (val_s, test_s), fit_s = baseline_scores(det, train_vals, [val_vals, test_vals], args)
            stats = {"seconds": round(fit_s, 1)}
        res[det] = {"val": val_s, "test": test_s, "labels": test_lab, "stats": stats}
    return res


def pooled(results: list[dict], det: str, contamination: float) -> dict:
    """Metrics on all entities' test rows pooled, each entity thresholded by its own validation rows."""
    scores, flags, labels = [], [], []
    for r in results:
        d = r[det]
        v = d["val"][np.isfinite(d["val"])]
        thr = float(np.quantile(v, 1 - contamination))
        s = d["test"]
        scores.append(s)
        flags.append(np.isfinite(s) & (s > thr))
        labels.append(d["labels"])
    # AUC-PR / AUROC over pooled rows compare scores across entities: rank-normalise each entity's scores
    # by its validation scores first (the fraction of validation rows below), so no entity's scale dominates
    ranked = []
    for r, s in zip(results, scores):
        ref = np.sort(r[det]["val"][np.isfinite(r[det]["val"])])
        q = np.searchsorted(ref, np.nan_to_num(s)) / max(1, len(ref)) + 1e-9 * np.tanh(np.nan_to_num(s))
        ranked.append(np.where(np.isfinite(s), q, np.nan))
    m = stream_metrics(np.concatenate(ranked), np.concatenate(flags), np.concatenate(labels))
    m["train_seconds"] = round(sum(r[det]["stats"].get("seconds", 0) for r in results), 1)
    return m


def fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def stream_table(name: str, results: list[dict], args) -> tuple[list[str], dict]:
    rows, raw = [], {}
    for det in DETECTORS:
        if det not in results[0]:
            continue
        m = pooled(results, det, args.contamination)
        raw[det] = m
        rows.append(f"| {name} | {det} | {fmt(m['auc_pr'])} | {fmt(m['auroc'])} | {fmt(m['f1'])} | "
                    f"{fmt(m['f1_point_adjusted'])} | {fmt(m.get('best_f1'))} | {m['train_seconds']} |")
    return rows, raw


def run_donut(args, root: Path) -> tuple[list[str], dict]:
    variants = {"plain windowed VAE": dict(mask=False, inject=0.0, mcmc=0),
                "+ modified ELBO": dict(mask=True, inject=0.0, mcmc=0),
                "+ missing injection": dict(mask=False, inject=0.01, mcmc=0),
                "+ MCMC imputation": dict(mask=False, inject=0.0, mcmc=10),
                "full Donut (all three)": dict(mask=True, inject=0.01, mcmc=10)}
    if args.donut_variants != "all":
        keep = {int(i) - 1 for i in args.donut_variants.split(",")}
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i in keep}
    rows, raw = [], {}
    fixed = args.donut_epochs > 0  # the same number of epochs for every variant (else the same minutes)
    budget = float("inf") if fixed else args.donut_budget_min * 60
    for csv_path in sorted((root / "donut-kpi").glob("*.csv")):
        s = read_series(csv_path)
        n = len(s)
        a, v = int(0.49 * n), int(0.21 * n)
        trained: dict = {}  # variants that train alike share the model (MCMC only changes the scoring)
        for vname, o in variants.items():
            key = (o["mask"], o["inject"])
            if key not in trained:
                data = load_series_data(csv_path, window=args.donut_window, stride=args.stride, val_fraction=0.21,
                                        test_fraction=1 - 0.49 - 0.21, mask_anomalies=o["mask"])
                local = argparse.Namespace(**{**vars(args), "window": args.donut_window})
                trained[key] = (data.source["scaler"], *train_vaekit(
                    data, local, budget, epochs=args.donut_epochs if fixed else 10_000, inject_missing=o["inject"]))
            sc, model, stats = trained[key]
            test_vals = apply_scaler(s.values[a + v:], sc)
            pts = score_series(model, test_vals, args.donut_window, mcmc=o["mcmc"]).point
            m = stream_metrics(pts, np.zeros(len(pts), bool), s.labels[a + v:])
            raw[f"{csv_path.stem}/{vname}"] = {**m, **stats}
            rows.append(f"| {csv_path.stem} | {vname} | {fmt(m.get('best_f1'))} | {fmt(m['auc_pr'])} | "
                        f"{fmt(m['auroc'])} | {stats['epochs']} | {stats['seconds']:.0f} |")
            print(rows[-1], flush=True)
    return rows, raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=SHARED)
    p.add_argument("--datasets", default="smd,msl,donut")
    p.add_argument("--detectors", default=",".join(DETECTORS))
    p.add_argument("--budget-min", type=float, default=12.0, help="vaekit's training minutes per dataset, all entities")
    p.add_argument("--donut-budget-min", type=float, default=2.0, help="training minutes per Donut variant and KPI")
    p.add_argument("--donut-epochs", type=int, default=0,
                   help="train every Donut variant for exactly N epochs instead (0: --donut-budget-min)")
    p.add_argument("--donut-variants", default="all",
                   help="comma-separated 1-based indices of the Donut variants to run (all: the five)")
    p.add_argument("--entities", type=int, default=None, help="only the first N machines / channels (smoke runs)")
    p.add_argument("--rows", type=int, default=None, help="only the first N test rows per entity (smoke runs)")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--donut-window", type=int, default=120, help="the Donut paper's window")
    p.add_argument("--stride", type=int, default=4, help="training stride (detection always scores every row)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--contamination", type=float, default=0.01)
    p.add_argument("--hidden", type=int, nargs="+", default=[128])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mcmc", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=HERE / "results" / "stream.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    detectors = [d for d in args.detectors.split(",") if d]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Stream anomaly detection ({now})", "",
             f"Command: `python bench/bench_stream.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads.  ",
             f"Windows of {args.window} rows (training stride {args.stride}; every test row scored), threshold: the "
             f"{1 - args.contamination:g} quantile of the validation rows' scores (last {args.val_fraction:g} of each "
             f"training series). vaekit: GRU VAE, hidden {args.hidden}, latent {args.latent_dim}, "
             f"{args.budget_min:g} min of training per dataset.", ""]
    raw: dict = {"argv": sys.argv[1:], "date": now}
    table = ["| dataset | detector | AUC-PR | AUROC | F1 (no adjustment) | F1 point-adjusted | best F1 | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ds in [d for d in args.datasets.split(",") if d in ("smd", "msl")]:
        ents = list((smd_entities if ds == "smd" else msl_entities)(args.data_dir, args.entities, args.rows))
        budget = args.budget_min * 60 / max(1, len(ents))
        results = []
        for name, train_path, test_vals, test_lab in ents:
            print(f"{ds} {name}: {len(test_vals)} test rows", flush=True)
            results.append(run_entity(name, train_path, test_vals, test_lab, args, budget, detectors))
        rows, raw[ds] = stream_table(ds.upper(), results, args)
        table += rows
        print("\n".join(rows), flush=True)
    if len(table) > 2:  # no empty table on a Donut-only run
        lines += table + [""]
    if "donut" in args.datasets:
        drows, raw["donut"] = run_donut(args, args.data_dir)
        per = f"{args.donut_epochs} epochs" if args.donut_epochs > 0 else f"{args.donut_budget_min:g} min"
        lines += [f"Donut ablation: window {args.donut_window}, {per} of training per "
                  "variant and KPI (variants that differ only in MCMC share one model), split 49/21/30 in time; best F1 over thresholds on the test part.", "",
                  "| KPI | detector | best F1 | AUC-PR | AUROC | epochs | train s |", "|---|---|---:|---:|---:|---:|---:|", *drows, ""]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "stream.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
