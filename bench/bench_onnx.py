"""Decoding speed of an exported model: onnxruntime against PyTorch eager, per example.

    .venv/bin/python bench/bench_onnx.py [--run RUN_DIR] [--threads 1,2] [--batches 1,64] [--repeats 300]

The model is the seed MNIST model (MLP 784-400-20, Bernoulli; untrained, which does not change the
arithmetic) unless ``--run`` names a trained run. It is exported with ``vaekit.export.export_model``
(the TorchScript exporter, as ``vaekit export`` does) and ``decoder.onnx`` is timed against the model's
own ``decode_mean`` under ``torch.inference_mode`` on the same fixed z. Each cell is the median over
``--repeats`` timings of a block of calls (enough calls for about 1 ms), after a warm-up, divided by
calls and batch size: microseconds per decoded example. PyTorch runs with ``torch.set_num_threads(T)``
and onnxruntime with ``intra_op_num_threads = T`` (one inter-op thread, all graph optimisations),
for each T of ``--threads``. Prints a markdown table with the command, machine and date.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_seed import cpu_name  # noqa: E402  (the machine line every bench writes)


def seed_model() -> torch.nn.Module:
    """The seed MNIST model of BENCHMARKS.md: MLP 784-400-20, Bernoulli likelihood, 28x28 grey images."""
    from vaekit.data.spec import DataSpec
    from vaekit.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[400], latent_dim=20, likelihood="bernoulli")
    return build_model(cfg, DataSpec((1, 28, 28), "8bit", 10))


def per_example_us(fn: Callable[[], object], batch: int, repeats: int) -> float:
    """Median microseconds per example of ``fn`` (one call decodes ``batch`` examples)."""
    for _ in range(20):  # warm-up: allocations, thread pools, caches
        fn()
    t0 = time.perf_counter()
    for _ in range(10):
        fn()
    calls = max(1, int(1e-3 / max((time.perf_counter() - t0) / 10, 1e-9)))  # a block of about 1 ms
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) / batch * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="a trained run to export (default: the untrained seed model)")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--batches", default="1,64", help="batch sizes, e.g. 1,64")
    ap.add_argument("--repeats", type=int, default=300, help="timed blocks per cell (the median is reported)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    import vaekit
    from vaekit.export import export_model

    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if args.run:
        model, what = vaekit.load(args.run), f"run {args.run}"
    else:
        model, what = seed_model(), "the seed model (MLP 784-400-20, Bernoulli), untrained"
    model = model.to("cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, Path(tmp) / "onnx")
        blob = (Path(tmp) / "onnx" / "decoder.onnx").read_bytes()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = t, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        for b in batches:
            z = torch.randn(b, model.latent_dim, generator=gen)
            feed = {"z": z.numpy()}
            with torch.inference_mode():
                want = model.decode_mean(z).numpy()
                got = session.run(["mean"], feed)[0]
                assert np.allclose(got, want, atol=1e-4, rtol=1e-4), "onnxruntime and PyTorch disagree"

                def eager() -> object:
                    return model.decode_mean(z)

                pt = per_example_us(eager, b, args.repeats)
            ox = per_example_us(lambda: session.run(["mean"], feed), b, args.repeats)
            rows.append((t, b, pt, ox))
            print(f"threads {t} batch {b}: PyTorch {pt:.2f} us/example, onnxruntime {ox:.2f}", file=sys.stderr)
    cmd = " ".join([".venv/bin/python", "bench/bench_onnx.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"### Decoding: onnxruntime vs PyTorch eager ({what})\n")
    print(f"Command: `{cmd}` (date {time.strftime('%Y-%m-%d')}); machine: {cpu_name()}, {os.cpu_count()} logical "
          f"CPUs; torch {torch.__version__}, onnxruntime {ort.__version__}, vaekit {vaekit.__version__}. Median of "
          f"{args.repeats} timed blocks of ~1 ms, microseconds per decoded example (z -> E[x|z]).\n")
    print("| threads | batch | PyTorch eager (us/example) | onnxruntime (us/example) | onnxruntime speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for t, b, pt, ox in rows:
        print(f"| {t} | {b} | {pt:.2f} | {ox:.2f} | {pt / ox:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
