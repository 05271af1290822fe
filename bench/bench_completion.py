"""MNIST quadrant completion (Sohn, Lee and Yan 2015): vaekit's completion CVAE against the paper's
deterministic baseline network, both trained by this script under the same budget.

    .venv/bin/python bench/bench_completion.py                 # 1, 2 and 3 quadrants given (the full run)
    .venv/bin/python bench/bench_completion.py --quadrants 2 --budget-min 10 --iw-samples 200
    .venv/bin/python bench/bench_completion.py --smoke         # ~1-2 min: tiny nets, 1 epoch, few examples

Protocol (as pyro's examples/cvae reproduces the paper): grey-level MNIST (pixel / 255, Bernoulli
likelihood on grey levels); 1 quadrant given = the bottom left, 2 = the left half, 3 = all but the
bottom right (``vaekit.functional.masks.paper_mask``); the score is the negative conditional
log-likelihood of the missing pixels, -log p(x_missing | x_given), in nats per test image.
- Baseline NN (the paper's, pyro's sizes): x_given with missing pixels set to -1 -> 784-500-500-784
  logits, trained on the summed binary cross-entropy of the missing pixels; its NLL is that
  cross-entropy on the test set.
- CVAE: ``vaekit train --model completion --given Q --hidden 500,500 --latent-dim 200`` (prior,
  recognition and generation networks of pyro's sizes; the generation network also reads the given
  part). Its NLL is estimated by importance sampling with K samples from the recognition network
  (``vaekit.metrics.evaluate(iw_samples=K)``), an estimate that tightens (falls) as K grows; the
  -ELBO (the number pyro reports) is an upper bound. A K sweep on the first test images shows the
  convergence.
Both: Adam, lr 1e-3, batch 128, at most --epochs epochs and --budget-min minutes of training each,
early stopping after --patience epochs without a better validation score (the same 54,000 / 6,000
train / validation split of the 60,000 training images), the best validation epoch kept. The
test set (10,000 images) is never used for training or selection.
Runs of single configurations (--quadrants 2) add their rows to the saved table (same K).

Writes bench/results/completion.md (table), completion.json, and completion_q{1,2,3}.png (rows: the
test image with its missing part grey, the baseline's prediction, 8 CVAE completions, the
original). --smoke writes to bench/out/completion-smoke/ instead, leaving the results alone.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnist"
# Targets of the issue: the CVAE's NLL must be at most these (pyro's reproduction of the paper,
# reported there as -ELBO); the baseline must land within 3 nats of pyro's baseline.
TARGET_CVAE = {1: 71.8, 2: 51.0, 3: 24.2}
REF_BASELINE = {1: 100.4, 2: 61.9, 3: 25.4}
STRIP_IMAGES, STRIP_DRAWS = 10, 8


class _OutOfTime(Exception):
    """Raised by the CVAE's epoch callback when the training budget is spent."""


class BaselineNet(nn.Module):
    """Sohn et al.'s deterministic network: x_given (missing pixels = -1), flat 784 -> logits of all 784."""

    def __init__(self, dim: int = 784, hidden: tuple[int, ...] = (500, 500)) -> None:
        super().__init__()
        sizes = [dim, *hidden, dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
        return self.net(torch.where(miss, torch.full_like(x, -1.0), x).flatten(1)).view_as(x)


def masked_nll(logits: torch.Tensor, x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over the missing pixels: (B,) nats."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return torch.where(miss, bce, torch.zeros_like(bce)).flatten(1).sum(1)


@torch.no_grad()
def baseline_nll(net: BaselineNet, x: torch.Tensor, miss: torch.Tensor, bs: int = 1000) -> float:
    net.eval()
    return float(torch.cat([masked_nll(net(x[i:i + bs], miss), x[i:i + bs], miss) for i in range(0, len(x), bs)]).mean())


def train_baseline(data, miss: torch.Tensor, args, hidden: tuple[int, ...]) -> tuple[BaselineNet, dict]:
    """Adam on the masked cross-entropy, early stopping on the validation NLL; the best epoch's weights."""
    torch.manual_seed(0)
    net = BaselineNet(hidden=hidden)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(0)
    x, xv = data.train.x, data.val.x
    best, best_state, since, epochs, t0 = math.inf, None, 0, 0, time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(args.batch_size):
            loss = masked_nll(net(x[idx], miss), x[idx], miss).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs = epoch + 1
        val = baseline_nll(net, xv, miss)
        if val < best:
            best, since, best_state = val, 0, {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
        print(f"  baseline epoch {epochs}: val NLL {val:.2f}", flush=True)
        if (args.patience and since >= args.patience) or time.perf_counter() - t0 > args.budget_min * 60:
            break
    net.load_state_dict(best_state)
    return net, {"train_s": time.perf_counter() - t0, "epochs": epochs, "val_nll": best}


def train_cvae(q: int, out: Path, args, hidden: list[int], latent: int):
    """vaekit's completion model for q quadrants given; returns the opened run and timing."""
    import vaekit
    from vaekit.apps.common import open_run
    from vaekit.training.trainer import read_history

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()

    def budget(trainer, rec):
        print(f"  cvae epoch {rec['epoch'] + 1}: val -ELBO {-rec.get('val_elbo', math.nan):.2f} "
              f"({rec['samples_per_s']:.0f} ex/s)", flush=True)
        if time.perf_counter() - t0 > args.budget_min * 60:
            raise _OutOfTime

    try:
        vaekit.train("mnist", data_dir=str(DATA), out=out, model="completion", given=str(q), hidden=hidden,
                     latent_dim=latent, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     patience=args.patience, progress=False, evaluate_test=False, figures=False,
                     device="cpu", callbacks=[budget])
    except _OutOfTime:
        pass
    seconds = time.perf_counter() - t0
    epochs = len(read_history(out))
    return open_run(out, device="cpu"), {"train_s": seconds, "epochs": epochs}


def evaluate_cvae(model, test_x: torch.Tensor, args) -> dict:
    from vaekit.metrics import evaluate

    t0 = time.perf_counter()
    res = evaluate(model, test_x, iw_samples=args.iw_samples, batch_size=500, seed=0)
    out = {"nll": res["nll"], "nll_std_err": res["nll_std_err"], "neg_elbo": -res["elbo"],
           "kl": res["kl"], "eval_s": time.perf_counter() - t0, "k_sweep": {}}
    sweep_x = test_x[:args.sweep_images]
    for k in sorted({1, 10, 100, args.iw_samples, 4 * args.iw_samples}):
        out["k_sweep"][k] = evaluate(model, sweep_x, iw_samples=k, batch_size=500, seed=0)["nll"]
    return out


def strips(path: Path, model, net: BaselineNet, x: torch.Tensor, miss: torch.Tensor) -> None:
    from vaekit.apps.complete import complete, save_completion_strips

    with torch.no_grad():
        net.eval()
        base = torch.where(miss, torch.sigmoid(net(x, miss)), x)
    comps = complete(model, x, miss.expand(x.shape), STRIP_DRAWS, seed=0)
    save_completion_strips(path, x, miss.expand(x.shape), torch.cat([base[None], comps]), kind="8bit", truth=x)


def run_one(q: int, data, out_dir: Path, args) -> dict:
    from vaekit.functional.masks import paper_mask

    hidden, latent = ([64], 8) if args.smoke else ([500, 500], 200)
    miss = paper_mask(q, 28, 28).expand(1, 28, 28)  # broadcasts over the batch
    test_x = data.test.x[:args.test_images] if args.test_images else data.test.x
    print(f"{q} quadrant(s) given: baseline", flush=True)
    net, b_info = train_baseline(data, miss, args, tuple(hidden))
    b_info["nll"] = baseline_nll(net, test_x, miss)
    print(f"  baseline test NLL {b_info['nll']:.2f} ({b_info['train_s']:.0f} s)", flush=True)
    print(f"{q} quadrant(s) given: CVAE", flush=True)
    run, c_info = train_cvae(q, ROOT / "bench" / "out" / f"completion-q{q}{'-smoke' if args.smoke else ''}", args,
                             hidden, latent)
    assert run.model.given == str(q)
    c_info.update(evaluate_cvae(run.model, test_x, args))
    print(f"  CVAE test NLL {c_info['nll']:.2f} (K={args.iw_samples}), -ELBO {c_info['neg_elbo']:.2f} "
          f"({c_info['train_s']:.0f} s training)", flush=True)
    strips(out_dir / f"completion_q{q}.png", run.model, net, data.test.x[:STRIP_IMAGES], miss)
    return {"quadrants_given": q, "cvae": c_info, "baseline": b_info, "test_images": len(test_x),
            "hidden": hidden, "latent_dim": latent, "iw_samples": args.iw_samples,
            "command": " ".join(args.argv), "date": time.strftime("%Y-%m-%d")}


def table(rows: list[dict], args, machine: str) -> str:
    k = args.iw_samples
    lines = [
        "# MNIST quadrant completion (Sohn et al. 2015)", "",
        "Commands: " + "; ".join(sorted({f"`.venv/bin/python bench/bench_completion.py {r['command']}` "
                                         f"({r['date']})" for r in rows})) + "  ",
        f"Machine: {machine}; torch {torch.__version__}.", "",
        "Negative conditional log-likelihood of the missing pixels, nats per test image "
        f"({rows[0]['test_images']} test images; grey-level MNIST, Bernoulli likelihood). CVAE NLL: "
        f"importance sampling with K = {k} samples from the recognition network (an estimate that falls "
        "toward the true value as K grows); -ELBO: the bound pyro's example reports.", "",
        f"| quadrants given | CVAE NLL (K={k}) | CVAE -ELBO | target | met | baseline NN NLL | pyro's baseline "
        "| within 3 nats | CVAE training | baseline training |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q, c, b = r["quadrants_given"], r["cvae"], r["baseline"]
        lines.append(
            f"| {q} | {c['nll']:.2f} ± {c['nll_std_err']:.2f} | {c['neg_elbo']:.2f} | <= {TARGET_CVAE[q]} | "
            f"{'yes' if c['nll'] <= TARGET_CVAE[q] else 'no'} | {b['nll']:.2f} | {REF_BASELINE[q]} | "
            f"{'yes' if abs(b['nll'] - REF_BASELINE[q]) <= 3 else 'no'} | {c['train_s'] / 60:.1f} min, "
            f"{c['epochs']} epochs | {b['train_s'] / 60:.1f} min, {b['epochs']} epochs |")
    lines += ["", f"Convergence in K (CVAE NLL on the first {args.sweep_images} test images):", "",
              "| quadrants given | " + " | ".join(f"K={k}" for k in rows[0]["cvae"]["k_sweep"]) + " |",
              "|---|" + "---|" * len(rows[0]["cvae"]["k_sweep"])]
    for r in rows:
        lines.append(f"| {r['quadrants_given']} | " + " | ".join(f"{v:.2f}" for v in r["cvae"]["k_sweep"].values()) + " |")
    lines += ["", "Strips (`completion_qN.png`): each row a test image with its missing part grey, the baseline's "
              f"prediction, {STRIP_DRAWS} CVAE completions (decoder means, z from the prior network), the original.", ""]
    return "\n".join(lines)


def main() -> None:
    import platform
    import sys

    from vaekit.data.datasets import load_data

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=100, help="most epochs per network (default 100)")
    ap.add_argument("--budget-min", type=float, default=28.0, help="most minutes of training per network (default 28)")
    ap.add_argument("--patience", type=int, default=5, help="early stopping (0: off)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--iw-samples", type=int, default=500, help="importance samples for the CVAE's NLL")
    ap.add_argument("--test-images", type=int, default=0, help="only the first N test images (0: all 10,000)")
    ap.add_argument("--sweep-images", type=int, default=500, help="test images of the K sweep")
    ap.add_argument("--smoke", action="store_true", help="tiny nets, 1 epoch, 200 test images, K=10: checks the script")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.smoke:
        args.epochs, args.iw_samples, args.test_images, args.sweep_images = 1, 10, 200, 50
    if not DATA.is_dir():
        sys.exit(f"MNIST not found in {DATA}")
    out_dir = ROOT / "bench" / ("out/completion-smoke" if args.smoke else "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", data_dir=str(DATA))
    rows = [run_one(q, data, out_dir, args) for q in args.quadrants]
    machine = f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} torch threads)".strip()
    saved = out_dir / "completion.json"
    if saved.exists():  # runs of single configurations add up: keep the other quadrants' rows
        old = json.loads(saved.read_text())
        rows += [r for r in old.get("rows", []) if r["quadrants_given"] not in args.quadrants
                 and r.get("iw_samples") == args.iw_samples]
    rows.sort(key=lambda r: r["quadrants_given"])
    saved.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    (out_dir / "completion.md").write_text(table(rows, args, machine))
    print(table(rows, args, machine))


if __name__ == "__main__":
    main()
