"""Train on a CUDA GPU inside a wall-clock budget: time an epoch first, then train exactly as many
epochs as fit, so that one cosine schedule ends inside the budget, then estimate the test NLL.

    python bench/gpu_budget_run.py --config RECIPE.toml --data-dir DIR --out RUN --budget SECONDS
    python bench/gpu_budget_run.py --resume RUN --data-dir DIR --budget SECONDS
        [--iw-samples 5000] [--probe-epochs 4] [--eval-probe 200] [--margin 0.03] [--cuda-graphs on|off]

1. Probe: the run trains --probe-epochs epochs in a scratch directory (a fresh run of the recipe,
   or, with --resume, a copy of RUN continued); the epochs after the first (which also loads the
   data and records the CUDA graph) are timed wall-clock, validation and checkpoint included.
   The K-sample test NLL is timed on the first --eval-probe test images to size the final one.
2. Train: N epochs, the most that fit in what is left of the budget (less --margin, a fraction).
   A fresh run is ``vaekit train --config RECIPE --epochs N --device cuda``; with --resume RUN
   (for instance a run trained on a CPU so far) it is ``vaekit train --out RUN --resume --epochs
   DONE+N --device cuda``: a cosine schedule is then stretched or cut to end at DONE+N, so its last
   part, the annealing, runs here. If the GPU turns out slower than probed and the budget is overrun
   by more than 5%, training stops after the current epoch (saved; ``--resume`` continues it).
3. ``vaekit evaluate RUN --iw-samples K`` (full fp32) on the test split, written to RUN/nll-K.json
   in bench/iwae_table.py's format, with the summary in RUN/budget_run.json.

``--device cpu`` exists only to try the script out on a small recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vaekit  # noqa: E402
from vaekit.metrics import evaluate  # noqa: E402
from vaekit.report import evaluate_run  # noqa: E402


class _OutOfTime(Exception):
    pass


def _epochs_done(run: Path) -> int:
    return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="recipe of a fresh run (with --out)")
    p.add_argument("--out", help="run directory of a fresh run")
    p.add_argument("--resume", help="run directory to continue instead")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--budget", type=float, required=True, help="seconds from now to the end of the NLL estimate")
    p.add_argument("--iw-samples", type=int, default=5000, help="K of the final test NLL (0: none)")
    p.add_argument("--probe-epochs", type=int, default=4)
    p.add_argument("--eval-probe", type=int, default=200, help="test images for timing the NLL estimate")
    p.add_argument("--margin", type=float, default=0.03, help="fraction of the remaining time kept spare")
    p.add_argument("--cuda-graphs", choices=["on", "off"], default="on")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    t_start = time.perf_counter()
    if (a.resume is not None and (a.config or a.out)) or (a.resume is None and not (a.config and a.out)):
        sys.exit("gpu_budget_run: give --config and --out (a fresh run) or --resume RUN")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_budget_run: no CUDA GPU here")
    out = Path(a.resume or a.out)
    done = _epochs_done(out) if a.resume else 0
    common = dict(data_dir=a.data_dir, device=a.device, progress=False, cuda_graphs=a.cuda_graphs == "on",
                  evaluate_test=False)

    def train(run_dir: Path, epochs: int, callbacks: list) -> vaekit.Run:
        if a.resume:
            return vaekit.train(None, out=run_dir, resume=True, epochs=epochs, callbacks=callbacks, **common)
        return vaekit.train(None, out=run_dir, config_file=a.config, epochs=epochs, callbacks=callbacks, **common)

    # 1. probe
    stamps: list[float] = []
    recorded: list[bool] = []

    def stamp(trainer, rec) -> None:
        stamps.append(time.perf_counter())
        recorded.append(getattr(trainer.graphed, "graph", None) is not None)

    scratch = Path(tempfile.mkdtemp(prefix="vaekit-probe-"))
    if a.resume:
        shutil.copytree(out, scratch / "run")
    t0 = time.perf_counter()
    probe = train(scratch / "run", done + a.probe_epochs, [stamp])
    gaps = [b - c for b, c in zip(stamps[1:], stamps[:-1])]
    epoch_s = sorted(gaps)[len(gaps) // 2] if gaps else stamps[0] - t0
    startup_s = max(0.0, (stamps[0] - t0) - epoch_s)
    eval_s = 0.0
    if a.iw_samples:
        x = probe.data.test.x[: a.eval_probe]
        te = time.perf_counter()
        evaluate(probe.model, x, iw_samples=a.iw_samples)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        eval_s = (time.perf_counter() - te) * len(probe.data.test.x) / max(1, len(x))
    probe_record = {"epoch_s": epoch_s, "epoch_gaps_s": gaps, "startup_s": startup_s, "eval_estimate_s": eval_s,
                    "cuda_graph_recorded": all(recorded),
                    "val_iwae": [r.get("val_iwae") for r in probe.history[done:]],
                    "val_elbo": [r.get("val_elbo") for r in probe.history[done:]]}
    shutil.rmtree(scratch, ignore_errors=True)
    print("probe", json.dumps(probe_record), flush=True)

    # 2. train
    left = a.budget - (time.perf_counter() - t_start)
    n = int(math.floor((left * (1 - a.margin) - startup_s - eval_s) / epoch_s))
    if n < 1:
        sys.exit(f"gpu_budget_run: no epoch fits: {left:.0f} s left, {epoch_s:.2f} s an epoch")
    deadline = t_start + a.budget * 1.05 - eval_s
    stopped = {"after": None}

    def guard(trainer, rec) -> None:
        if time.perf_counter() > deadline and rec["epoch"] + 1 < trainer.cfg.epochs:
            stopped["after"] = rec["epoch"] + 1
            raise _OutOfTime

    print(f"training epochs {done + 1}-{done + n} ({epoch_s:.3f} s each by the probe)", flush=True)
    t_train = time.perf_counter()
    try:
        train(out, done + n, [guard])
    except _OutOfTime:
        pass
    train_s = time.perf_counter() - t_train
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if a.resume:
        command = f"vaekit train --out {out} --resume --epochs {done + n} --device {a.device} --data-dir DIR"
    else:
        command = f"vaekit train --config {a.config} --epochs {n} --device {a.device} --data-dir DIR --out {out}"
    if a.cuda_graphs == "off":
        command += " --cuda-graphs off"
    machine = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or platform.machine()

    # 3. the NLL estimate
    ev: dict = {}
    if a.iw_samples:
        te = time.perf_counter()
        ev = evaluate_run(out, data_dir=a.data_dir, iw_samples=a.iw_samples, device=a.device)
        ev = {k: v for k, v in ev.items() if k not in ("kl_per_dim", "posterior_mean_var")}
        ev.update(eval_s=time.perf_counter() - te, train_wall_s=train_s, machine=machine, command=command,
                  date=time.strftime("%Y-%m-%d"))
        (out / f"nll-{a.iw_samples}.json").write_text(json.dumps(ev, indent=2) + "\n")
    summary = {
        "command": command, "epochs_before": done, "epochs_planned": n, "epochs_now": len(history),
        "stopped_early_after": stopped["after"], "probe": probe_record, "train_s": train_s,
        "total_s": time.perf_counter() - t_start,
        "epoch_time_s_median": sorted(r["epoch_time_s"] for r in history[done:])[len(history[done:]) // 2],
        "best_epoch": history[-1]["best_epoch"] + 1, "test": ev, "machine": machine, "torch": torch.__version__,
        "python": platform.python_version(), "threads": os.environ.get("OMP_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "budget_run.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
