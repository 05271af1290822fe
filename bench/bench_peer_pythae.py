"""Peer speed (issue 19): vaekit's AAE and VAE-GAN against pythae 0.1.2's Adversarial_AE and VAEGAN,
trained side by side on the same MNIST examples with the same networks, batch size, learning rate
and number of epochs. Target: vaekit at least 2x pythae's training examples per second, with a
sample Frechet distance no worse.

Run alone on a quiet machine (from the repository root):

    .venv/bin/python bench/bench_peer_pythae.py --epochs 10                  # the comparison
    .venv/bin/python bench/bench_peer_pythae.py --sides pythae --train-n 5000 --epochs 1 \\
        --results bench/out/peer_pythae_smoke.md                             # smoke: pythae side only

The first run creates bench/.envs/pythae (python -m venv; the env bench/pythae_baseline.py uses, made
the same way): torch==2.13.0 first (the local CPU wheel), then pythae==0.1.2 under a constraints file
pinning torch, so pythae is never a vaekit dependency. Nothing else needed pinning: pythae 0.1.2 imports
and trains with what pip resolves beside it (pydantic 2, numpy 2; the versions are recorded in the
results). pythae's side is bench/_pythae_worker.py run in that env on the exact training examples vaekit
trains on (vaekit's MNIST split for --seed: 54,000 of the 60,000 training images; written to --work).

Both sides (details in _pythae_worker.py's docstring):
- networks: encoder 784-H(ReLU)-{mu, log-variance}(L), decoder L-H(ReLU)-784 with a sigmoid (Bernoulli
  means), H = --hidden (400), L = --latent-dim (20): vaekit's default MLP. The critic is pythae's default
  Discriminator_MLP shape, one hidden layer of --critic-hidden (256) ReLU units and a sigmoid output, on z
  for the AAE, on x for the VAE-GAN; vaekit gets --critic-hidden the same. z ~ N(0, I) prior.
- pythae: its models' own losses and its TrainingPipeline (AdversarialTrainer for the AAE,
  CoupledOptimizerAdversarialTrainer for the VAE-GAN), Adam at --lr for every player, --batch-size.
  AAE reconstruction "bce" (pythae's default is "mse"; vaekit's MNIST likelihood is Bernoulli); VAE-GAN
  feature reconstruction at the discriminator's hidden layer (--pythae-recon-layer; pythae's default,
  -1, is its one-unit output).
- vaekit: ``vaekit train --data mnist --model aae|vaegan`` with the same sizes, --batch-size, --lr,
  --epochs, --seed, --prior standard-normal, and pythae's settings where vaekit has the option (AAE:
  --encoder gaussian, and on pythae's schedule --adversarial-weight 0.5, pythae's adversarial_loss_scale;
  the paper's three updates have no such weight (the generator has its own Adam); VAE-GAN: --gamma 1 --equilibrium 0.68 --margin 0.4, pythae's decoder loss
  0.5 recon - 0.5 GAN and its skip rule). --vaekit-args appends further flags (later flags win).

Examples per second: training examples / seconds in the training loops, summed over all epochs (pythae:
its epoch train loop, first batch to last optimizer step; vaekit: each epoch's ``epoch_time_s`` in
metrics.jsonl, which excludes validation). Start-up, data loading, validation, saving and sampling are
outside both.

Sample quality: --n-samples (10,000) decoder means of prior draws from each trained model, against the
first --n-samples test images, in the penultimate features of vaekit's reference MNIST classifier (cached
per dataset, trained once if missing): vaekit's side by ``vaekit evaluate RUN --sample-quality --json``,
pythae's samples by the same functions that command calls (``vaekit.apps.sample_quality``:
``embed_all``, ``frechet_distance``, ``precision_recall`` with k = 3) and the same cached net. Not the
Inception FID.

A markdown table is appended to --results (bench/results/peer_pythae.md); the raw JSON of each side goes
to --work (bench/out/peer_pythae/). A vaekit model that does not exist in this checkout (or fails) is
reported as such in its row; pythae's side still runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
from bench_seed import cpu_name  # noqa: E402  (the machine line every bench writes)

ENV_DIR = HERE / ".envs" / "pythae"
ENV_PY = ENV_DIR / "bin" / "python"
TORCH, PYTHAE = "torch==2.13.0", "pythae==0.1.2"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
MODELS = ("aae", "aae-joint", "vaegan")
#: the bench's row names: "aae-joint" is vaekit's AAE on pythae's update schedule (--phases joint: one
#: forward pass, autoencoder then discriminator) against the same pythae AAE run as "aae" (the paper's
#: three updates per batch)
VAEKIT_MODEL = {"aae": "aae", "aae-joint": "aae", "vaegan": "vaegan"}
PYTHAE_MODEL = {"aae": "aae", "aae-joint": "aae", "vaegan": "vaegan"}
PYTHAE_NAMES = {"aae": "Adversarial_AE (AdversarialTrainer)", "vaegan": "VAEGAN (CoupledOptimizerAdversarialTrainer)"}
#: pythae 0.1.2's settings expressed as vaekit flags, where vaekit has the option
VAEKIT_MATCH = {"aae": ["--encoder", "gaussian"],
                "aae-joint": ["--encoder", "gaussian", "--phases", "joint", "--adversarial-weight", "0.5"],
                "vaegan": ["--gamma", "1", "--equilibrium", "0.68", "--margin", "0.4"]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_env() -> None:
    """bench/.envs/pythae with torch==2.13.0 and pythae==0.1.2 (created once; shared with
    bench/pythae_baseline.py, which builds it the same way and writes the same stamp)."""
    ready = ENV_DIR / ".bench-ready"
    if ready.exists() and ENV_PY.exists():
        return
    log(f"creating {ENV_DIR} ({TORCH}, then {PYTHAE}) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    pip = [str(ENV_PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [TORCH], check=True)  # first: an unpinned torch would pull CUDA packages
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run(pip + ["-c", str(constraints), PYTHAE], check=True)
    ready.write_text(f"{TORCH}\n{PYTHAE}\n")


def env_versions() -> dict[str, str]:
    out = subprocess.run([str(ENV_PY), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True)
    try:
        return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}


def vaekit_cmd() -> list[str]:
    script = Path(sys.executable).parent / "vaekit"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from vaekit.cli import main; sys.exit(main())"]


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON object in the output")


class Scorer:
    """Scores sample arrays exactly as ``vaekit evaluate RUN --sample-quality`` does (same data
    preparation, same cached reference classifier, same functions, same first n test images)."""

    def __init__(self, data, n: int):
        from vaekit.apps.feature_net import reference_feature_net
        from vaekit.apps.sample_quality import DEFAULT_K, describe, embed_all

        self.net, self.meta, self.path = reference_feature_net(data, log=log)
        self.features = describe(self.meta)
        self.k = DEFAULT_K
        self.n = min(n, len(data.test))
        self.shape = tuple(data.test.x.shape[1:])
        self.real = embed_all(self.net, data.test.x[: self.n])

    def score(self, samples: np.ndarray) -> dict:
        from vaekit.apps.sample_quality import embed_all, frechet_distance, precision_recall

        x = torch.from_numpy(np.ascontiguousarray(samples[: self.n], dtype=np.float32)).reshape(-1, *self.shape)
        fake = embed_all(self.net, x)
        precision, recall = precision_recall(self.real, fake, self.k)
        return {"fd": frechet_distance(self.real, fake), "precision": precision, "recall": recall, "k": self.k,
                "n_samples": len(fake), "n_real": len(self.real), "fd_features": self.features,
                "feature_net": str(self.path), "feature_net_test_accuracy": self.meta.get("test_accuracy")}


def run_pythae(args, model: str, arrays: Path, work: Path, scorer: Scorer, score: bool = True) -> dict:
    """One pythae training run; ``score=False``: timing only (a --repeats run: few samples, none scored)."""
    model = PYTHAE_MODEL[model]
    samples = work / f"pythae-{model}-samples{'' if score else '-timing'}.npy"
    cmd = [str(ENV_PY), str(HERE / "_pythae_worker.py"), "--data", str(arrays), "--model", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--hidden", args.hidden, "--latent-dim", str(args.latent_dim), "--critic-hidden", args.critic_hidden,
           "--seed", str(args.seed), "--n-samples", str(args.n_samples if score else 16), "--samples-out", str(samples)]
    if args.pythae_recon_layer is not None:
        cmd += ["--recon-layer", str(args.pythae_recon_layer)]
    log(f"pythae {model}: {args.epochs} epochs ...")
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of vaekit's venv or src/ inside pythae's env
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                          text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-2000:]
        return {"error": f"pythae worker exited with {proc.returncode}: {tail.strip().splitlines()[-1:] or ''}",
                "stderr_tail": tail}
    res = last_json(proc.stdout)
    if score:
        res.update(scorer.score(np.load(samples)))
    return res


def vaekit_has(model: str) -> tuple[bool, str]:
    try:
        from vaekit.models import MODELS as REGISTRY
    except Exception as e:  # noqa: BLE001 -- a broken checkout is reported, not raised
        return False, f"vaekit.models does not import ({type(e).__name__}: {e})"
    if model in REGISTRY:
        return True, ""
    return False, f"vaekit has no --model {model} in this checkout (models: {', '.join(REGISTRY.names())})"


def run_vaekit(args, model: str, work: Path, score: bool = True) -> dict:
    """One vaekit training run and its sample quality; ``score=False``: timing only."""
    ok, why = vaekit_has(VAEKIT_MODEL[model])
    if not ok:
        log(why)
        return {"error": why}
    run_dir = work / f"vaekit-{model}-s{args.seed}{'' if score else '-timing'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [*vaekit_cmd(), "train", "--data", "mnist", "--data-dir", args.data_dir, "--model", VAEKIT_MODEL[model],
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--hidden", args.hidden, "--latent-dim", str(args.latent_dim), "--critic-hidden", args.critic_hidden,
           "--prior", "standard-normal", "--seed", str(args.seed), "--out", str(run_dir), "--quiet", "--json",
           *VAEKIT_MATCH[model], *shlex.split(args.vaekit_args)]
    log(f"vaekit {model}: {shlex.join(cmd[len(vaekit_cmd()):])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip()
        return {"error": f"vaekit train exited with {proc.returncode}: "
                         f"{tail.splitlines()[-1] if tail else '(no message)'}", "command": cmd}
    res = {"train": last_json(proc.stdout), "command": cmd}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loop_s = sum(r["epoch_time_s"] for r in rows)
    seen = sum(r["samples_per_s"] * r["epoch_time_s"] for r in rows)
    res.update(epochs=len(rows), train_loop_s=loop_s, examples_per_s=seen / loop_s if loop_s > 0 else None,
               train_n=round(seen / len(rows)) if rows else 0,
               per_epoch_examples_per_s=[r["samples_per_s"] for r in rows],
               skipped_steps=rows[-1].get("skipped_steps") if rows else None,
               critic_won_epochs=[r["epoch"] + 1 for r in rows if r.get("critic_won")])
    if not score:
        return res
    ev = [*vaekit_cmd(), "evaluate", str(run_dir), "--data-dir", args.data_dir, "--sample-quality",
          "--n-samples", str(args.n_samples), "--json"]
    log(f"vaekit {model}: evaluate --sample-quality ...")
    proc = subprocess.run(ev, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip()
        res["error"] = f"vaekit evaluate exited with {proc.returncode}: {tail.splitlines()[-1] if tail else ''}"
        return res
    q = last_json(proc.stdout)
    res.update({k: q.get(k) for k in ("fd", "precision", "recall", "k", "n_samples", "n_real", "fd_features",
                                      "feature_net", "feature_net_test_accuracy")})
    return res


def summarise_repeats(sides: dict) -> None:
    """With --repeats: each side's "examples_per_s" becomes the median over its runs that finished
    (the first run's kept as "examples_per_s_first"; a failed repeat is named in "repeats_error"), and
    "paired_ratios" lists vaekit / pythae of each pair, in order, where both runs of the pair finished.
    (The first pythae run of the aae-joint row is the aae row's: that pair is not back to back.)"""
    speeds: dict[str, list[float | None]] = {}
    for side in ("pythae", "vaekit"):
        first = sides.get(side)
        if not first or "error" in first or not sides.get(f"{side}_repeats"):
            continue
        first.setdefault("examples_per_s_first", first.get("examples_per_s"))
        runs = [first["examples_per_s_first"]] + [None if "error" in r else r.get("examples_per_s")
                                                   for r in sides[f"{side}_repeats"]]
        failed = [r.get("error", "no examples/s") for r in sides[f"{side}_repeats"]
                  if "error" in r or r.get("examples_per_s") is None]
        if failed:
            sides["repeats_error"] = f"{len(failed)} {side} timing run(s) failed: {failed[0]}"
        speeds[side] = runs
        done = [v for v in runs if v is not None]
        first["examples_per_s_runs"] = done
        first["examples_per_s"] = statistics.median(done)
    if len(speeds) == 2:
        sides["paired_ratios"] = [v / p for p, v in zip(speeds["pythae"], speeds["vaekit"]) if p and v]


def fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(args, results: dict, data_n: int, scorer: Scorer, versions: dict) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## AAE and VAE-GAN on MNIST: vaekit against pythae {versions.get('pythae', '0.1.2')} ({now})", "",
        f"Command: `.venv/bin/python bench/bench_peer_pythae.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; {platform.platform()}; "
        f"torch {torch.__version__} (vaekit) / {versions.get('torch', '?')} (pythae env), pythae "
        f"{versions.get('pythae', '?')}, pydantic {versions.get('pydantic', '?')}, numpy {versions.get('numpy', '?')} "
        "in bench/.envs/pythae.  ",
        f"Settings: {args.epochs} epochs on {data_n:,} training examples (vaekit's MNIST split, seed {args.seed}), "
        f"batch {args.batch_size}, Adam lr {args.lr:g} for every player; encoder 784-{args.hidden}-2x{args.latent_dim}, "
        f"decoder {args.latent_dim}-{args.hidden}-784 sigmoid, critic MLP {args.critic_hidden} + sigmoid (AAE on z, "
        "VAE-GAN on x).  ",
        f"Sample quality: {scorer.n:,} decoder means of z ~ N(0, I) against the first {scorer.n:,} test images, "
        f"{scorer.features}, "
        f"k = {scorer.k}; net `{scorer.path}` (test accuracy {fmt(scorer.meta.get('test_accuracy'), '.4f')}).", "",
        "| model | library | epochs | train examples | examples/s (training loop" + (
            f", median of {args.repeats} runs" if args.repeats > 1 else "") + ") | sample FD | precision | recall "
        "| examples/s vaekit/pythae | FD vaekit/pythae |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for model, sides in results.items():
        p, v = sides.get("pythae"), sides.get("vaekit")
        for lib, r in (("pythae", p), ("vaekit", v)):
            if r is None:
                continue
            name = PYTHAE_NAMES[PYTHAE_MODEL[model]] if lib == "pythae" else shlex.join(
                ["--model", VAEKIT_MODEL[model], *VAEKIT_MATCH[model]])
            if lib == "pythae" and PYTHAE_MODEL[model] != model:
                name += f" (the same run as the {PYTHAE_MODEL[model]} row)"
            if "error" in r and r.get("fd") is None:
                lines.append(f"| {model} | {lib} {name} | — | — | — | — | — | — | — | — |")
                verdicts.append(f"- {model}, {lib}: not measured: {r['error']}")
                continue
            speed_ratio = fd_ratio = "—"
            if lib == "vaekit" and p and "error" not in p and r.get("examples_per_s") and p.get("examples_per_s"):
                pairs = sides.get("paired_ratios")
                ratio = statistics.median(pairs) if pairs else r["examples_per_s"] / p["examples_per_s"]
                speed_ratio = f"{ratio:.2f}x"
                if r.get("fd") is not None and p.get("fd"):
                    fd_ratio = f"{r['fd'] / p['fd']:.2f}"
                    met = ratio >= 2 and r["fd"] <= p["fd"]
                    how = (f"median of {len(pairs)} alternating pairs: {', '.join(f'{q:.2f}x' for q in pairs)}; "
                           f"pythae {', '.join(f'{q:,.0f}' for q in p['examples_per_s_runs'])} ex/s, vaekit "
                           f"{', '.join(f'{q:,.0f}' for q in r['examples_per_s_runs'])} ex/s; " if pairs else "")
                    verdicts.append(f"- {model}: target (>= 2x examples/s, FD no worse): "
                                    f"{'met' if met else 'not met'} ({speed_ratio}, {how}FD {r['fd']:.2f} vs {p['fd']:.2f})")
            lines.append(f"| {model} | {lib} {name} | {r.get('epochs', '—')} | {fmt(r.get('train_n'), ',')} | "
                         f"{fmt(r.get('examples_per_s'), ',.0f')} | {fmt(r.get('fd'), '.2f')} | "
                         f"{fmt(r.get('precision'), '.3f')} | {fmt(r.get('recall'), '.3f')} | {speed_ratio} | {fd_ratio} |")
            if r.get("error"):
                verdicts.append(f"- {model}, {lib}: {r['error']}")
            if lib == "vaekit" and sides.get("repeats_error"):
                verdicts.append(f"- {model}: {sides['repeats_error']}")
            if lib == "vaekit" and r.get("feature_net") and str(r["feature_net"]) != str(scorer.path):
                verdicts.append(f"- {model}: WARNING vaekit evaluate used feature net {r['feature_net']}, "
                                f"pythae's samples were scored with {scorer.path}: the FDs are not comparable")
    if args.train_n:
        verdicts.append(f"- smoke run: pythae trained on the first {args.train_n:,} training examples only")
    return "\n".join(lines + [""] + verdicts + ["", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="aae,aae-joint,vaegan",
                   help="comma list of: aae, aae-joint (vaekit --phases joint against the same pythae run), vaegan")
    p.add_argument("--sides", default="pythae,vaekit", help="comma list of: pythae, vaekit")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every player, both libraries")
    p.add_argument("--hidden", default="400", help="MLP hidden widths of encoder and decoder (e.g. 400)")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--critic-hidden", default="256", help="hidden widths of the discriminator MLP")
    p.add_argument("--pythae-recon-layer", type=int, default=None,
                   help="pythae VAE-GAN reconstruction_layer (default: the critic's last hidden layer; -1: pythae's "
                        "default, its output)")
    p.add_argument("--vaekit-args", default="", help="extra flags for vaekit train (e.g. '--weight-average 0')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--train-n", type=int, default=None,
                   help="smoke tests: pythae trains on the first N training examples (only with --sides pythae: "
                        "vaekit train has no subset option)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "peer_pythae"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "peer_pythae.md"))
    p.add_argument("--verbose", action="store_true", help="show both libraries' logs and progress")
    p.add_argument("--repeats", type=int, default=1,
                   help="training runs per side and model, alternating pythae and vaekit; the first pair is scored, "
                        "the rest time only; the row shows the median examples/s and the verdict the median of the "
                        "pairs' ratios (this host's speed drifts by tens of percent between minutes)")
    args = p.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not models or set(models) - set(MODELS):
        p.error(f"--models: choose from {', '.join(MODELS)}")
    if not sides or set(sides) - {"pythae", "vaekit"}:
        p.error("--sides: choose from pythae, vaekit")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.train_n is not None and "vaekit" in sides:
        p.error("--train-n is for smoke tests of the pythae side (--sides pythae): vaekit train has no subset "
                "option, so the two sides would not train on the same examples")
    if not (Path(args.data_dir) / "train-images-idx3-ubyte.gz").is_file():
        p.error(f"MNIST IDX files not found in {args.data_dir} (--data-dir)")

    from vaekit.data.datasets import load_data

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # exactly the data `vaekit train --data mnist --seed S` and `vaekit evaluate --sample-quality` load
    data = load_data("mnist", data_dir=args.data_dir, seed=args.seed, download=False)
    train_x = data.train.x.flatten(1).numpy()
    if args.train_n is not None:
        train_x = train_x[: args.train_n]
    log("reference classifier (vaekit's cache; trained once if missing) ...")
    scorer = Scorer(data, args.n_samples)
    if "pythae" in sides:
        ensure_env()
    versions = env_versions() if ENV_PY.exists() else {}
    if "pythae" in sides:
        arrays = work / f"mnist-train-s{args.seed}-n{len(train_x)}.npz"
        np.savez(arrays, train_x=train_x)

    results: dict[str, dict] = {}
    for model in models:
        results[model] = {}
        if "pythae" in sides:
            done = next((r["pythae"] for m, r in results.items() if m != model and "pythae" in r
                         and PYTHAE_MODEL[m] == PYTHAE_MODEL[model]), None)
            # (a copy: summarise_repeats rewrites a side's examples/s, and the other row keeps its own)
            results[model]["pythae"] = dict(done) if done is not None else run_pythae(args, model, arrays, work, scorer)
        if "vaekit" in sides:
            results[model]["vaekit"] = run_vaekit(args, model, work)
        for _ in range(args.repeats - 1):  # timing pairs: pythae then vaekit, back to back
            for side, run in (("pythae", lambda: run_pythae(args, model, arrays, work, scorer, score=False)),
                              ("vaekit", lambda: run_vaekit(args, model, work, score=False))):
                if side in sides:
                    results[model].setdefault(f"{side}_repeats", []).append(run())
        summarise_repeats(results[model])
    raw = {"argv": sys.argv[1:], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu": cpu_name(), "cores": os.cpu_count(), "pythae_env": versions, "results": results}
    (work / "results.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    text = table(args, results, len(train_x), scorer, versions)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if out.exists() else "# Peer speed: vaekit against pythae 0.1.2, AAE and VAE-GAN (issue 19)\n\n"
    with open(out, "a") as f:
        f.write(header + text)
    print(text)


if __name__ == "__main__":
    main()
