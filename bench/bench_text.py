"""Text VAE on the Penn Treebank (issue 20): vaekit's sentence VAE (``--tokens word --arch lstm``)
against an LSTM language model of the same size trained for the same wall-clock time in this script.

Target: the VAE keeps KL >= 2 nats per sentence (no posterior collapse) while its importance-sampled
test perplexity is within 5% of the LSTM language model's (Bowman et al. 2016 report 119 vs 116 at
far larger budgets). Data: ``ptb/ptb.{train,valid,test}.txt`` (Mikolov's 10k-word version, <unk>
already in the text); the vocabulary from the training file; each sentence ends with <eos>; every
token counts in the perplexity (<eos> included), the standard PTB protocol for sentence models.

Both models: a one-layer LSTM of ``--hidden`` units over ``--hidden``-wide word embeddings, Adam at
``--lr``, batch ``--batch-size``, ``--budget-min`` minutes each (whole epochs), the best validation
epoch kept. The VAE adds the bidirectional LSTM encoder and z (``--latent-dim``), fed to the decoder
at every step and as its initial state, with KL warm-up (``--kl-warmup`` epochs), word dropout
(``--word-dropout``) and free bits (``--free-bits`` nats per latent dimension). Its test perplexity
is exp(sum of per-sentence -log p(x) estimated with K = ``--iw-samples`` importance samples / tokens);
the language model's is exact.

    python bench/bench_text.py --data-dir ../shared/data --budget-min 12
    python bench/bench_text.py --budget-min 0.3 --limit 2000 --iw-samples 5        # smoke

Appends to bench/results/text.md (the table, 10 samples and 2 interpolations).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _budget import fit_within  # noqa: E402
from vaekit.data.batch import Batch  # noqa: E402
from vaekit.data.datasets import Data  # noqa: E402
from vaekit.data.spec import DataSpec  # noqa: E402
from vaekit.data.text import build_vocab, encode, ids_to_text, read_lines, tokenize  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def ptb(root: Path, limit: int | None) -> tuple[Data, list[str]]:
    parts = {k: [tokenize(s, "word") for s in read_lines(root / "ptb" / f"ptb.{k}.txt")][:limit]
             for k in ("train", "valid", "test")}
    vocab = build_vocab(parts["train"])
    t = max(len(s) for s in parts["train"]) + 1
    splits = {}
    for k, sents in parts.items():
        ids, mask, _ = encode(sents, vocab, t)
        splits[k] = Batch(torch.from_numpy(ids.astype(np.float32))[..., None], mask=torch.from_numpy(mask)[..., None])
    spec = DataSpec((t, 1), "tokens", vocab_size=len(vocab))
    source = {"kind_of_source": "text", "vocab": vocab, "tokens": "word", "max_len": t}
    return Data(spec, splits["train"], splits["valid"], splits["test"], source), vocab


class LSTMLM(nn.Module):
    """p(x) = prod_t p(x_t | x_<t): the VAE's decoder without z."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def nll(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sentence -log p(x): (B,). Padding comes after each sentence, so the batch is cut at its
        longest sentence (the causal LSTM never reads past it), and the output layer and softmax run
        at the observed tokens only, as vaekit's text decoder does: the same value, far less work."""
        m = mask[..., 0] > 0
        t = int(m.sum(1).max())
        ids, m = x[:, :t, 0].long(), m[:, :t]
        prev = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)  # id 0 (<pad>) as the start token
        h, _ = self.rnn(self.embed(prev))
        lp = torch.log_softmax(self.out(h[m]), -1).gather(-1, ids[m][:, None])[:, 0]
        return -torch.zeros(m.shape, dtype=lp.dtype).masked_scatter(m, lp).sum(1)


def train_lm(data: Data, args) -> tuple[LSTMLM, dict]:
    torch.manual_seed(args.seed)
    lm = LSTMLM(data.spec.vocab_size, args.hidden)
    opt = torch.optim.Adam(lm.parameters(), lr=args.lr)
    tr = data.train
    best, best_state, epochs, t0 = math.inf, None, 0, time.perf_counter()
    last = 0.0
    while time.perf_counter() - t0 + last <= args.budget_min * 60 or epochs == 0:
        e0 = time.perf_counter()
        lm.train()
        perm = torch.randperm(len(tr))
        for i in range(0, len(tr), args.batch_size):
            b = tr.select(perm[i:i + args.batch_size])
            loss = lm.nll(b.x, b.mask).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(lm.parameters(), 5.0)
            opt.step()
        epochs += 1
        val = perplexity_lm(lm, data.val, args.batch_size)
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in lm.state_dict().items()}
        last = time.perf_counter() - e0
    lm.load_state_dict(best_state)
    return lm.eval(), {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 1), "val_perplexity": best}


@torch.no_grad()
def perplexity_lm(lm: LSTMLM, split: Batch, bs: int) -> float:
    lm.eval()
    tot = sum(float(lm.nll(split.x[i:i + bs], split.mask[i:i + bs]).sum()) for i in range(0, len(split), bs))
    return math.exp(tot / float(split.mask.sum()))


def train_vae(data: Data, args):
    from vaekit.config import make_config
    from vaekit.models import build_model
    from vaekit.training.trainer import Trainer

    cfg = make_config(None, model="vae", arch="lstm", hidden=[args.hidden], latent_dim=args.latent_dim,
                      word_dropout=args.word_dropout, free_bits=args.free_bits, kl_warmup=args.kl_warmup,
                      epochs=10_000, batch_size=args.batch_size, lr=args.lr, seed=args.seed, grad_clip=5.0)
    torch.manual_seed(args.seed)
    trainer = Trainer(build_model(cfg.model, data.spec), data, cfg.train, None, progress=False)
    model, stats = fit_within(trainer, args.budget_min * 60, whole_epochs=True)
    return model, stats, trainer.history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=SHARED)
    p.add_argument("--budget-min", type=float, default=12.0, help="training minutes for each model")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--word-dropout", type=float, default=0.25)
    p.add_argument("--free-bits", type=float, default=0.1, help="nats per latent dimension")
    p.add_argument("--kl-warmup", type=float, default=3.0, help="epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="first N sentences of each file (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=HERE / "results" / "text.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data, vocab = ptb(args.data_dir, args.limit)
    print(f"PTB: {len(data.train)} / {len(data.val)} / {len(data.test)} sentences, vocabulary {len(vocab)}, "
          f"padded length {data.spec.shape[0]}", flush=True)
    lm, lm_stats = train_lm(data, args)
    lm_ppl = perplexity_lm(lm, data.test, args.batch_size)
    print(f"LSTM LM: test perplexity {lm_ppl:.1f} ({lm_stats})", flush=True)
    vae, vae_stats, hist = train_vae(data, args)
    from vaekit.metrics import evaluate

    t0 = time.perf_counter()
    ev = evaluate(vae, data.test, iw_samples=args.iw_samples, batch_size=64, seed=args.seed)
    ev_s = time.perf_counter() - t0
    print(f"VAE: test perplexity {ev['perplexity']:.1f}, KL {ev['kl']:.2f}, active units {ev['active_units']} "
          f"({vae_stats}, evaluation {ev_s:.0f} s)", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        z = torch.randn(10, args.latent_dim, generator=gen)
        torch.manual_seed(args.seed)
        samples = ids_to_text(vae.generate_tokens(z, temperature=1.0, greedy=True), None, vocab, "word")
        pairs = []
        for i, j in ((0, 1), (2, 3)):
            a, b = data.test[i:i + 1], data.test[j:j + 1]
            za, _ = vae.encode(a.x, mask=a.mask)
            zb, _ = vae.encode(b.x, mask=b.mask)
            w = torch.linspace(0, 1, 5)[:, None]
            path = ids_to_text(vae.generate_tokens((1 - w) * za + w * zb, greedy=True), None, vocab, "word")
            pairs.append((ids_to_text(a.x, a.mask, vocab, "word")[0], path, ids_to_text(b.x, b.mask, vocab, "word")[0]))
    ratio = ev["perplexity"] / lm_ppl
    met = ev["kl"] >= 2.0 and ratio <= 1.05
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## PTB sentences: VAE against an LSTM language model ({now})", "",
             f"Command: `python bench/bench_text.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads. LSTM {args.hidden}, embeddings {args.hidden}, batch {args.batch_size}, "
             f"Adam {args.lr:g}, {args.budget_min:g} min each; VAE latent {args.latent_dim}, word dropout "
             f"{args.word_dropout:g}, free bits {args.free_bits:g}, KL warm-up {args.kl_warmup:g} epochs.", "",
             "| model | epochs | test perplexity | KL (nats / sentence) | active units |", "|---|---:|---:|---:|---:|",
             f"| LSTM language model | {lm_stats['epochs']} | {lm_ppl:.1f} | — | — |",
             f"| vaekit VAE (IWAE K={args.iw_samples}) | {vae_stats['epochs']} | {ev['perplexity']:.1f} | {ev['kl']:.2f} | "
             f"{ev['active_units']}/{args.latent_dim} |", "",
             f"Target (KL >= 2 nats and perplexity within 5% of the LM's): **{'met' if met else 'not met'}** "
             f"(ratio {ratio:.3f}, KL {ev['kl']:.2f}).", "",
             "Validation curve of the VAE (epoch: -ELBO, KL): " + ", ".join(
                 f"{r['epoch'] + 1}: {-r.get('val_elbo', math.nan):.1f}, {r.get('val_kl', math.nan):.2f}" for r in hist), "",
             "Samples (z ~ N(0, I), greedy decoding):", "", *[f"- {s}" for s in samples], "",
             "Interpolations between test sentences (posterior means, 5 points, greedy):", ""]
    for a, path, b in pairs:
        lines += [f"- from: *{a}*", *[f"  - {s}" for s in path], f"- to: *{b}*", ""]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
