"""What reading a feature net from ONNX costs: the perceptual term (forward through the frozen net for x
and the decoder's mean, backward into the mean) with vaekit's built-in small CNN against the same
weights exported to ONNX and run by vaekit's graph reader (``modules.onnx_graph``), and the answers'
agreement. Also how long reading the file takes (parse, the probe and the onnxruntime check).

    python bench/bench_onnx_feature_net.py [--batch 128] [--repeats 200] [--out bench/results/onnx_feature_net.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vaekit.apps.feature_net import load_feature_net
from vaekit.modules.feature_nets import build_feature_net
from vaekit.modules.perceptual import PerceptualLoss

HERE = Path(__file__).resolve().parent


def step_times(loss: PerceptualLoss, x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per forward + backward of the term on (x, a perturbed x), after 10 warm-up steps."""
    out = []
    for i in range(repeats + 10):
        x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_()
        t0 = time.perf_counter()
        loss(x, x_hat).sum().backward()
        if i >= 10:
            out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "onnx_feature_net.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    shape = (1, 28, 28)
    net = build_feature_net("small-cnn", shape, 10).eval()
    meta = {"architecture": "small-cnn", "input_shape": list(shape), "num_classes": 10, "arch_args": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(net, (torch.rand(2, *shape),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
        t0 = time.perf_counter()
        onnx_net, onnx_meta = load_feature_net(path)
        read_s = time.perf_counter() - t0
    builtin = PerceptualLoss({"weight": 1.0, "net": meta})
    builtin.net.load_state_dict(net.state_dict())
    from_onnx = PerceptualLoss({"weight": 1.0, "net": {k: onnx_meta[k] for k in meta}})
    from_onnx.net.load_state_dict(onnx_net.state_dict())
    x = torch.rand(args.batch, *shape)
    x_hat = x.flip(0)
    with torch.no_grad():
        diff = float((builtin(x, x_hat) - from_onnx(x, x_hat)).abs().max() / builtin(x, x_hat).abs().max())
    rows = []
    times = {"built-in small-cnn": [], "ONNX export, vaekit's reader": []}
    for _ in range(3):  # alternate, so that drift in the machine's speed hits both
        times["built-in small-cnn"] += step_times(builtin, x, args.repeats // 3)
        times["ONNX export, vaekit's reader"] += step_times(from_onnx, x, args.repeats // 3)
    base = statistics.median(times["built-in small-cnn"])
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(f"| {name} | {med * 1e3:.2f} | {statistics.quantiles(ts, n=4)[0] * 1e3:.2f} - "
                    f"{statistics.quantiles(ts, n=4)[2] * 1e3:.2f} | {med / base:.2f}x |")
    text = "\n".join([
        "# The perceptual term with an ONNX feature net", "",
        f"Command: `python bench/bench_onnx_feature_net.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
        f"Forward and backward of the perceptual term, batch {args.batch} of 28x28 images, the same weights "
        f"({len(times['built-in small-cnn'])} steps each, interleaved).", "",
        "| feature net | median ms / step | quartiles (ms) | vs built-in |", "|---|---:|---:|---:|", *rows, "",
        f"- Largest relative difference of the term between the two: {diff:.2e}",
        f"- Reading the .onnx file (parse, a probe batch, the onnxruntime check): {read_s:.2f} s; "
        f"checked with onnxruntime: {onnx_meta['checked_with_onnxruntime']}",
        f"- Nodes run: {len(onnx_meta['arch_args']['nodes'])} "
        f"({', '.join(sorted({n['op'] for n in onnx_meta['arch_args']['nodes']}))})", ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
