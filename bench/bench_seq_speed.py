"""Training speed of the sequence models (issue 20): windows per second on an SMD machine and tokens
per second on PTB sentences, and where one training step's time goes (torch.profiler, CPU).

    python bench/bench_seq_speed.py --data-dir ../shared/data [--steps 30]

Prints a markdown report (appended to bench/results/seq_speed.md): throughput of the training step
(forward, backward, Adam; no data loading, which is a slice of a tensor in memory), and the operators
that take the most self time in one step, grouped as recurrent kernels (GRU/LSTM and their backward),
matmuls outside them, elementwise/likelihood, optimizer, and the rest.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from vaekit.data.sequences import load_series_data  # noqa: E402
from vaekit.models import ModelConfig, build_model  # noqa: E402
from vaekit.training.optim import Adam  # noqa: E402

HERE = Path(__file__).resolve().parent
REC = "inside the recurrent layers (forward + backward, children included)"
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
GROUPS = (("recurrent kernels", ("gru", "lstm", "rnn")), ("matmul", ("mm", "addmm", "bmm", "linear", "matmul")),
          ("optimizer", ("adam",)), ("embedding", ("embedding",)))


def group(name: str) -> str:
    n = name.lower()
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return "elementwise / likelihood / other"


def measure(model, x, mask, steps: int, batch: int) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    opt = Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(i):
        j = (i * batch) % max(1, len(x) - batch)
        out = model.loss(x[j:j + batch], mask=mask[j:j + batch])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    dt = (time.perf_counter() - t0) / steps
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(5):
            step(i)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    groups: dict[str, float] = {}
    for e in ev:
        groups[group(e.key)] = groups.get(group(e.key), 0.0) + e.self_cpu_time_total / total
    # the recurrent layers' whole time, their inner matmuls and gates included: on the CPU a GRU runs as
    # one aten::gru call whose per-step work shows up as mm / sigmoid / cat underneath it (no Python loop)
    rec = sum(e.cpu_time_total for e in ev if any(k in e.key.lower() for k in
              ("aten::gru", "aten::lstm", "mkldnn_rnn", "grubackward", "lstmbackward", "rnnbackward")))
    groups["inside the recurrent layers (forward + backward, children included)"] = rec / total
    top = sorted(((e.key, e.self_cpu_time_total / total) for e in ev), key=lambda kv: -kv[1])[:8]
    return dt, groups, top


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=SHARED)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--results", type=Path, default=HERE / "results" / "seq_speed.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    rows, details = [], []
    smd = args.data_dir / "smd" / "machine-1-6_train.npy"
    d = load_series_data(smd, window=64, stride=4)
    m = build_model(ModelConfig(arch="gru", hidden=[128], latent_dim=20), d.spec)
    dt, groups, top = measure(m, d.train.x, d.train.mask, args.steps, args.batch_size)
    rows.append(f"| SMD machine-1-6, windows 64 x 38, GRU 128 | {args.batch_size} | {1e3 * dt:.1f} | "
                f"{args.batch_size / dt:,.0f} windows/s ({args.batch_size * 64 / dt:,.0f} steps/s) | "
                f"{100 * groups[REC]:.0f}% |")
    details.append(("SMD GRU", groups, top))

    from bench_text import ptb  # the same PTB encoding as the text benchmark

    data, _ = ptb(args.data_dir, None)
    m = build_model(ModelConfig(arch="lstm", hidden=[256], latent_dim=32), data.spec)
    tok = float(data.train.mask.sum()) / len(data.train)
    dt, groups, top = measure(m, data.train.x, data.train.mask, args.steps, 64)
    rows.append(f"| PTB sentences, LSTM 256, vocabulary {data.spec.vocab_size} | 64 | {1e3 * dt:.1f} | "
                f"{64 * tok / dt:,.0f} tokens/s | {100 * groups[REC]:.0f}% |")
    details.append(("PTB LSTM", groups, top))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Sequence training speed ({now})", "",
             f"Command: `python bench/bench_seq_speed.py {' '.join(sys.argv[1:])}`; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads.", "",
             "| data and model | batch | ms / step | throughput | share of the step inside the recurrent layers |",
             "|---|---:|---:|---:|---:|", *rows, ""]
    for name, groups, top in details:
        lines.append(f"{name}: " + ", ".join(f"{g} {100 * v:.0f}%" for g, v in sorted(groups.items(), key=lambda kv: -kv[1])))
        lines.append("top operators (self time): " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in top))
        lines.append("")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
