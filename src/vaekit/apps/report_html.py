"""One self-contained HTML page per run: metrics, curves, reconstructions, samples, the latent map,
an interpolation and the anomaly-score histogram, every image embedded (no external files)."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.datasets import Split
from ..figures import _save_figure, save_image_grid, save_reconstructions, save_samples, save_training_curves
from ..io import write_text
from ..models.base import ModelConfig
from ..training.trainer import read_history
from .common import LoadedRun, class_names
from .generate import figure_samples, known_labels, reconstruct, seeded
from .latent import embed, interpolate, map_2d
from .plots import save_confusion_matrix, save_frames, save_latent_map

MAP_POINTS = 2000  # test examples on the latent map and in the histogram
CSS = """body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{margin-bottom:.1em}.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1.2em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em;min-width:8.5em}.card b{display:block;font-size:1.5em}
.card span{color:#666;font-size:.85em}section{margin:2em 0}img{max-width:100%;image-rendering:pixelated;
border:1px solid #eee}.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.row>div{flex:1;min-width:300px}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}p.note{color:#555;font-size:.9em}"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f"<p class=note>({html.escape(alt)}: not available)</p>"
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _card(value: str, label: str) -> str:
    return f"<div class=card><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>"


def _score_histogram(path: Path, scores: np.ndarray, labels: np.ndarray | None, names: list[str]) -> Path | None:
    """-ELBO per test example; the 95th percentile marks the top 5 % as candidate anomalies.
    Non-finite scores (a model whose ELBO overflowed) are left out and counted in the title; None
    when no score is finite."""
    finite = np.isfinite(scores)
    left_out = int((~finite).sum())
    if not finite.any():
        return None
    scores, labels = scores[finite], (labels[finite] if labels is not None else None)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    bins = np.histogram_bin_edges(scores, 40)
    if labels is not None and len(np.unique(labels)) <= 10:
        for k in np.unique(labels):
            ax.hist(scores[labels == k], bins=bins, histtype="step", lw=1.3, label=names[int(k)] if names else str(k))
        ax.legend(title="label", fontsize=7, ncols=2)
    else:
        ax.hist(scores, bins=bins, color="C0", alpha=0.8)
    thr = float(np.quantile(scores, 0.95))
    ax.axvline(thr, color="C3", ls="--", label="95th percentile")
    ax.set(xlabel="anomaly score: -ELBO (nats per example)", ylabel="examples",
           title=f"anomaly scores of {len(scores)} test examples (dashed: 95th percentile {thr:.1f})"
           + (f"; {left_out} non-finite left out" if left_out else ""))
    return _save_figure(path, fig)


def _sections(run: LoadedRun, test: Split, tmp: Path) -> dict[str, Path | None]:
    """Render every figure the page needs into ``tmp`` (reusing the run's own PNGs when present)."""
    model, spec, d = run.model, run.spec, run.dir
    out: dict[str, Path | None] = {}
    records = read_history(d)
    out["curves"] = d / "training_curves.png" if (d / "training_curves.png").exists() else (
        save_training_curves(tmp / "curves.png", records) if records else None)
    b = test[:MAP_POINTS]  # with labels / conditions: a conditional model reads them
    x = b.x
    cond = getattr(model, "batch_fields", ())
    with seeded(run.config.train.seed):
        x_hat, _ = reconstruct(model, b[:16])
        out["recon"] = save_reconstructions(tmp / "recon.png", x[:16], x_hat, n=16, kind=spec.kind,
                                            sequence=spec.is_sequence)
        xs, _, nrow = figure_samples(model, b, n=64 if spec.is_image or spec.is_sequence else 500, seed=None,
                                     mean=spec.is_image or spec.is_sequence)
        out["samples"] = save_samples(tmp / "samples.png", xs, kind=spec.kind, reference=x[:500], nrow=nrow,
                                      sequence=spec.is_sequence)
        out["per_class"] = "y" in cond
        mu, _ = embed(model, b)
        coords, axes = map_2d(mu.numpy(), method="pca")
        names = class_names(run.source, spec.num_classes)
        y = None if test.y is None else test.y[:MAP_POINTS].numpy()
        out["map"] = save_latent_map(tmp / "map.png", coords, labels=y, names=names, axes_label=axes,
                                     title=f"latent map of {len(mu)} test examples")
        j = next((i for i in range(1, len(x)) if y is None or y[i] != y[0]), min(1, len(x) - 1))
        fields = known_labels(model, x[[0, j]], {f: getattr(b, f)[[0, j]] for f in cond})  # (M2: -1 filled)
        ends = {f: (v[0:1], v[1:2]) for f, v in fields.items()}
        frames = interpolate(model, x[0], x[j], steps=10, cond_from={f: v[0] for f, v in ends.items()} or None,
                             cond_to={f: v[1] for f, v in ends.items()} or None)
        out["interp"] = save_frames(tmp / "interp.png", frames, spec)
        out["interp_ends"] = (0, j)
        from ..metrics import per_example_scores

        kind = "elbo" if getattr(model, "has_elbo", True) else "recon"
        scores = per_example_scores(model, b, kind=kind, seed=run.config.train.seed).numpy()
        out["hist"] = _score_histogram(tmp / "hist.png", scores, y, names)
        top = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf))[:8]  # non-finite last
        out["top"] = save_image_grid(tmp / "top.png", x[top], nrow=8, kind=spec.kind) if spec.is_image else None
    if spec.kind == "tokens":  # sentences: shown as text, decoded greedily from z
        _sentences(run, b, out)
    out["kl"] = d / "kl_per_dim.png" if (d / "kl_per_dim.png").exists() else None
    out["confusion"], out["classifier"] = None, None
    if callable(getattr(model, "classify", None)) and test.y is not None:  # a classifier q(y|x): M2
        from .classify import predict_proba, summarize

        summary = summarize(predict_proba(model, test.x), test.y, class_names(run.source, spec.num_classes))
        if summary.get("confusion") is not None:
            out["classifier"] = summary
            out["confusion"] = save_confusion_matrix(
                tmp / "confusion.png", summary["confusion"], summary["classes"],
                title=f"q(y|x) on {summary['n_labelled']} labelled test examples: accuracy {100 * summary['accuracy']:.2f}%")
    return out


def _sentences(run: LoadedRun, b: Split, out: dict[str, Any]) -> None:
    """Text runs: reconstructions (each test sentence, then the sentence decoded greedily from its
    posterior mean), samples from the prior and an interpolation, as sentences."""
    from ..data.text import ids_to_text

    model, vocab, tok = run.model, run.source["vocab"], run.source["tokens"]
    text = lambda ids, mask=None: ids_to_text(ids, mask, vocab, tok)  # noqa: E731
    dev = model.device
    with seeded(run.config.train.seed):
        part = b[:8].to(dev)
        mu, _ = model.encode(part.x, mask=part.mask)
        out["recon_text"] = list(zip(text(part.x, part.mask), text(model.generate_tokens(mu, greedy=True))))
        z = model.prior_sample(12)
        out["samples_text"] = text(model.generate_tokens(z, greedy=True))
        if len(part) > 1:
            w = torch.linspace(0, 1, 7, device=dev, dtype=mu.dtype)[:, None]
            out["interp_text"] = text(model.generate_tokens((1 - w) * mu[0:1] + w * mu[1:2], greedy=True))
    out["recon"] = out["samples"] = out["interp"] = out["top"] = None


def _text_list(lines: list[str]) -> str:
    return "<ol class=sentences>" + "".join(f"<li>{html.escape(s) or '(empty)'}</li>" for s in lines) + "</ol>"


def resolved_model_config(run: LoadedRun) -> ModelConfig:
    """The run's model settings with the defaults filled in (likelihood, widths, ...): the model's
    own config, which ``build_model`` resolved; a config still holding Nones is resolved here."""
    m = getattr(run.model, "config", None)
    if not isinstance(m, ModelConfig):
        m = run.config.model
    return m.resolved(run.spec) if m.likelihood is None or (m.hidden is None and m.arch == "mlp") else m


def model_settings(run: LoadedRun) -> list[str]:
    """The resolved architecture, widths, latent size and likelihood, e.g. ["mlp 400", "latent 20",
    "bernoulli likelihood"] (a conv run's default channels are the conv plan's)."""
    m = resolved_model_config(run)
    hidden = m.hidden
    if hidden is None and m.arch == "conv" and run.spec.is_image:
        from ..modules.blocks import conv_plan

        hidden = conv_plan(run.spec.shape, None)[0]
    widths = ",".join(str(h) for h in hidden) if hidden else "default"
    return [f"{m.arch} {widths}", f"latent {m.latent_dim}", f"{m.likelihood} likelihood"]


def _model_line(run: LoadedRun) -> str:
    """The model in a few words, with the resolved settings (``model_settings``)."""
    m = resolved_model_config(run)
    extra = [f"beta {m.beta:g}"] if m.beta != 1 else []
    if getattr(m, "latent_dim2", 0):
        extra.append(f"second layer {m.latent_dim2}")
    if getattr(m, "conditional_prior", False) and getattr(run.model, "batch_fields", ()):
        extra.append("conditional prior p(z|c)")
    return " · ".join([m.model, *model_settings(run), *extra])


def _summary_cards(ev: dict[str, Any], records: list[dict[str, Any]]) -> str:
    cards = []
    if "elbo" in ev:
        cards.append(_card(f"{-ev['elbo']:.2f}", "test -ELBO (nats/example)"))
        cards.append(_card(f"{ev['recon']:.2f}", "reconstruction (nats)"))
        cards.append(_card(f"{ev['kl']:.2f}", "KL (nats)"))
    if ev.get("nll") is not None:
        cards.append(_card(f"{ev['nll']:.2f}", f"NLL, K={ev.get('iw_samples')} (nats)"))
    if "bits_per_dim" in ev:
        cards.append(_card(f"{ev['bits_per_dim']:.3f}", "bits/dim"))
    if "active_units" in ev:
        cards.append(_card(f"{ev['active_units']}/{len(ev.get('posterior_mean_var', []))}", "active units"))
    if records:
        cards.append(_card(str(len(records)), f"epochs (best {records[-1].get('best_epoch', 0) + 1})"))
        sps = np.mean([r["samples_per_s"] for r in records if "samples_per_s" in r] or [0])
        cards.append(_card(f"{sps:,.0f}", "training examples/s"))
    return "<div class=cards>" + "".join(cards) + "</div>"


def _training_notes(records: list[dict[str, Any]]) -> str:
    """Warnings from the training log: epochs the critic won, updates skipped as non-finite."""
    notes = []
    won = [r["epoch"] + 1 for r in records if r.get("critic_won")]
    if won:
        shown = ", ".join(str(e) for e in won[:10]) + (" ..." if len(won) > 10 else "")
        notes.append(f"The critic won {len(won)} epoch(s) ({shown}): its accuracy stayed near 100% for the whole "
                     "epoch, so the other players learned little from it then.")
    skipped = records[-1].get("skipped_steps", 0) if records else 0
    if skipped:
        by = records[-1].get("skipped_by_player")
        detail = " (" + ", ".join(f"{k}: {v}" for k, v in by.items()) + ")" if by else ""
        notes.append(f"{skipped} update(s) were skipped as non-finite{detail}.")
    return "".join(f"<p class=note><b>{html.escape(n)}</b></p>" for n in notes)


def build_report(run: LoadedRun, test: Split, *, evaluation: dict[str, Any] | None = None,
                 out: str | Path | None = None) -> Path:
    """Write ``out`` (default ``RUN/report.html``): one page, images embedded as data URIs.

    test: the examples shown (the run's test split, or any inputs). ``evaluation``: metrics to
    show (default: ``RUN/evaluation.json`` when it exists).
    """
    if callable(getattr(run.model, "complete", None)):  # completion models get their own page
        from .complete import build_completion_report

        return build_completion_report(run, test, evaluation=evaluation, out=out)
    d = run.dir
    out = Path(out) if out is not None else d / "report.html"
    if evaluation is None and (d / "evaluation.json").exists():
        evaluation = json.loads((d / "evaluation.json").read_text())
    ev = evaluation or {}
    cfg, spec = run.config, run.spec
    records = read_history(d)
    with tempfile.TemporaryDirectory() as t, torch.no_grad():
        figs = _sections(run, test, Path(t))
        model_line = _model_line(run)
        a, b = figs["interp_ends"]
        parts = [
            f"<h1>{html.escape(d.name)}</h1>",
            f"<p class=sub>data: {html.escape(str(cfg.data.source))} · examples of shape {spec.shape} ({spec.kind}) · "
            f"{html.escape(model_line)}</p>",
            _summary_cards(ev, records),
            "<section><h2>Training</h2>" + _training_notes(records) + _img(figs["curves"], "training curves") + "</section>",
            "<section class=row><div><h2>Reconstructions</h2><p class=note>"
            + ("each test sentence, then (&rarr;) the sentence decoded greedily from its posterior mean</p>"
               + _text_list([f"{o}  →  {r}" for o, r in figs["recon_text"]]) if figs.get("recon_text") else
               "originals above their reconstructions (decoder mean at the posterior mean)</p>"
               + _img(figs["recon"], "reconstructions")) + "</div>"
            "<div><h2>Samples</h2><p class=note>" + ("one row per class: " + html.escape(", ".join(
                class_names(run.source, spec.num_classes))) + "; z drawn from the prior, decoded with the class"
                if figs["per_class"] else "z drawn from the prior, decoded") + "</p>"
            + (_text_list(figs["samples_text"]) if figs.get("samples_text") else _img(figs["samples"], "samples"))
            + "</div></section>",
            "<section><h2>Latent space</h2>" + _img(figs["map"], "latent map") + "</section>",
            f"<section><h2>Interpolation</h2><p class=note>test example {a} to test example {b}, linear in z</p>"
            + (_text_list(figs["interp_text"]) if figs.get("interp_text") else _img(figs["interp"], "interpolation"))
            + "</section>",
            "<section><h2>Anomaly scores</h2>" + _img(figs["hist"], "anomaly score histogram")
            + ("<p class=note>the 8 least likely test examples:</p>" + _img(figs["top"], "most anomalous")
               if figs.get("top") else "") + "</section>",
            ("<section><h2>Classifier</h2><p class=note>the model's q(y|x) on the test examples shown here; "
             f"accuracy {100 * figs['classifier']['accuracy']:.2f}% ({figs['classifier']['n_labelled']} labelled)</p>"
             + _img(figs["confusion"], "confusion matrix") + "</section>" if figs.get("confusion") else ""),
            "<section><h2>Latent dimensions</h2>" + (_img(figs["kl"], "KL per dimension") if figs["kl"] else
                                                      "<p class=note>(no KL term: this model has no tractable q(z|x))</p>")
            + "</section>",
            "<section><h2>Configuration</h2><details><summary>config.json</summary><pre>"
            + html.escape(json.dumps(cfg.to_dict(), indent=2)) + "</pre></details></section>",
        ]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vaekit report: {html.escape(d.name)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    write_text(out, page)
    return out
