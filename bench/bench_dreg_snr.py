"""Gradient noise of an IWAE's encoder and decoder: the plain reparameterisation estimator of the
k-sample bound against doubly reparameterised gradients (DReG, Tucker et al. 2019).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_dreg_snr.py RUN_DIR [--data-dir DIR] [--batch 100]
        [--draws 50] [--k K]

Loads the trained model of RUN_DIR (its ``model.safetensors``), takes the first ``--batch``
validation images (dynamically binarized runs: one fixed binarization) and computes the gradient
of the batch loss ``--draws`` times with fresh samples z, for each estimator. Prints one JSON
object: per parameter group (encoder, decoder; with two layers also encoder2, decoder2) the
signal-to-noise ratio |mean| / std of the gradient entries (the median over entries, as in
Rainforth et al. 2018) and the relative spread ||std|| / ||mean||. The two estimators share the
decoder gradients exactly (same samples); the encoder's is where they differ.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--k", type=int, default=None, help="importance samples (default: the run's)")
    a = p.parse_args()

    from vaekit.run import load, load_run_data, read_config

    cfg, _, _ = read_config(a.run_dir)
    model = load(a.run_dir)
    if cfg.model.model != "iwae":
        raise SystemExit(f"{a.run_dir} is a {cfg.model.model!r} run; this compares IWAE gradient estimators")
    if a.k:
        model.config.k = a.k
    data = load_run_data(cfg, a.data_dir)
    x = data.val.x[: a.batch]
    if data.dynamic_binarize:
        x = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < x).to(x.dtype)
    model.train()
    groups = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
    res: dict = {"run": a.run_dir, "k": model.config.k, "batch": len(x), "draws": a.draws}
    for est in ("reparam", "dreg"):
        model.config.gradient_estimator = est
        torch.manual_seed(1)
        draws: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
        t0 = time.perf_counter()
        for _ in range(a.draws):
            model.zero_grad()
            model.loss(x)["loss"].backward()
            for g in groups:
                draws[g].append(torch.cat([q.grad.flatten() for n, q in model.named_parameters() if n.split(".")[0] == g]))
        res[f"{est}_s_per_draw"] = round((time.perf_counter() - t0) / a.draws, 4)
        for g in groups:
            d = torch.stack(draws[g]).double()  # (draws, entries)
            mean, std = d.mean(0), d.std(0)
            snr = (mean.abs() / std.clamp_min(1e-30)).median()
            res[f"{est}_{g}"] = {"median_snr": round(float(snr), 3),
                                 "rel_spread": round(float(std.norm() / mean.norm().clamp_min(1e-30)), 3)}
    res["encoder_snr_gain"] = round(res["dreg_encoder"]["median_snr"] / res["reparam_encoder"]["median_snr"], 2)
    res["median_over"] = "gradient entries"
    print(json.dumps(res))


if __name__ == "__main__":
    main()
