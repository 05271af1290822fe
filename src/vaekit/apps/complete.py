"""Complete partly observed examples with a completion model (``--model completion``), draw the
completion strips, and the completion run's report page.

A strip is one row per example: the input with its missing part blanked (mid-grey), then n
completions (the given values kept exactly), then the original when it is known.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import Split
from ..errors import UsageError
from ..figures import save_image_grid
from ..functional.masks import NAMED_PATTERNS, named_mask
from ..io import write_text
from .common import LoadedRun
from .generate import seeded

STRIP_EXAMPLES = 8  # examples in the run's completions.png
STRIP_DRAWS = 8  # completions per example there


def can_complete(model: Any) -> bool:
    """True for models that complete a given part (they have ``complete(x, mask, n)``)."""
    return callable(getattr(model, "complete", None))


def check_completion_model(model: Any) -> None:
    """UsageError naming the fix when ``model`` cannot complete a given part."""
    if not can_complete(model):
        name = getattr(getattr(model, "config", None), "model", type(model).__name__)
        raise UsageError(f"this run's model ({name}) does not complete a given part; train one with --model "
                         "completion (e.g. --given random), or fill missing values of this run with vaekit impute")


def pattern_mask(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A named mask pattern (``functional.masks.NAMED_PATTERNS``) as bool ``shape``, True = missing."""
    if name not in NAMED_PATTERNS:
        raise UsageError(f"unknown mask pattern {name!r}; valid: {', '.join(NAMED_PATTERNS)}, or a PNG/.npy file")
    if len(shape) != 3:
        raise UsageError(f"mask pattern {name!r} needs an image model; this model's examples are vectors of "
                         f"{shape[0]}: give a .npy of 0/1 (1 = missing)")
    return named_mask(name, shape)


def check_masks(miss: torch.Tensor) -> None:
    """Every example needs something given and something missing: UsageError naming the first that does not.

    miss: bool (N, *shape), True = missing.
    """
    flat = miss.flatten(1)
    for what, bad in (("nothing missing (nothing to complete)", ~flat.any(1)),
                      ("everything missing (nothing given to complete from)", flat.all(1))):
        if bad.any():
            i = int(bad.nonzero()[0])
            where = "the mask" if len(flat) == 1 else f"example {i} of the inputs with the mask"
            raise UsageError(f"{where} leaves {what}; mark the missing part white (1) and the given part black (0)")


@torch.no_grad()
def complete(model: Any, x: torch.Tensor, miss: torch.Tensor, n: int = 8, *, mean: bool = True,
             temperature: float = 1.0, seed: int | None = 0, batch_size: int = 500) -> torch.Tensor:
    """n completions of each example: float32 (n, N, *shape) on the CPU, model units.

    x: (N, *shape) model units, any values (or NaN) where missing; miss: bool (N, *shape) or
    (*shape), True = missing. Given values come back bit for bit. ``mean``: decoder means
    (probabilities for Bernoulli models), else draws. ``seed`` makes the draws repeatable without
    touching the caller's random state (None: unseeded).
    """
    check_completion_model(model)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise UsageError(f"--n must be a positive whole number, got {n}")
    x = torch.as_tensor(x, dtype=torch.float32)
    miss = torch.as_tensor(miss, dtype=torch.bool).expand(x.shape)
    check_masks(miss)
    p = next(model.parameters())
    out = []
    with seeded(seed):
        for i in range(0, len(x), max(1, batch_size // int(n))):
            j = i + max(1, batch_size // int(n))
            xb, mb = x[i:j].to(p.device, p.dtype), miss[i:j].to(p.device)
            c = model.complete(xb, mb, int(n), mean=mean, temperature=temperature)
            out.append(c.to("cpu", torch.float32))
    res = torch.cat(out, dim=1)
    return torch.where(miss, res, x)  # the given values exactly as they came in


def blanked(x: torch.Tensor, miss: torch.Tensor, kind: str | None) -> torch.Tensor:
    """x with its missing values shown grey: 0.3 for data in [0, 1] (darker than the grid's 0.5
    padding, so the blank stays inside its cell), else the given values' mean."""
    given = x[~miss & torch.isfinite(x)]
    fill = 0.3 if kind in ("binary", "8bit", "unit") or given.numel() == 0 else float(given.mean())
    return torch.where(miss, torch.full_like(x, fill), x)


def save_completion_strips(path: str | Path, x: torch.Tensor, miss: torch.Tensor, completions: torch.Tensor, *,
                           kind: str | None = None, truth: torch.Tensor | None = None) -> Path:
    """One row per example: x with its missing part blanked, the n completions, then ``truth`` when given.

    x, truth: (N, C, H, W); miss: bool, broadcastable to x; completions: (n, N, C, H, W).
    """
    miss = torch.as_tensor(miss, dtype=torch.bool).expand(x.shape)
    cols = [blanked(x, miss, kind)[:, None], completions.transpose(0, 1)]
    if truth is not None:
        cols.append(truth[:, None])
    rows = torch.cat([c.to(torch.float32) for c in cols], dim=1)  # (N, 1 + n (+ 1), C, H, W)
    return save_image_grid(path, rows.flatten(0, 1), nrow=rows.shape[1], kind=kind)


def save_test_completions(path: str | Path, model: Any, x: torch.Tensor, *, examples: int = STRIP_EXAMPLES,
                          n: int = STRIP_DRAWS, seed: int = 0) -> Path:
    """The run's figure: the first ``examples`` of x (N, C, H, W), each with the mask the model
    evaluates it with (its training masks), n completions and the original."""
    x = torch.as_tensor(x[:examples], dtype=torch.float32)
    p = next(model.parameters())
    was = model.training
    model.eval()  # evaluation masks: a function of each example, as in the test metrics
    try:
        with torch.no_grad():
            miss = model.given_mask(x.to(p.device, p.dtype)).cpu()
    finally:
        model.train(was)
    comps = complete(model, x, miss, n, seed=seed)
    return save_completion_strips(path, x, miss, comps, kind=model.spec.kind, truth=x)


def write_completion_figures(run_dir: Path, model: Any, test_x: torch.Tensor, records: list[dict[str, Any]],
                             evaluation: dict[str, Any], *, seed: int = 0) -> None:
    """A completion run's figures: completions.png (images only; strips of test examples instead of
    the reconstructions and samples of other runs), training_curves.png and kl_per_dim.png."""
    from ..figures import save_kl_per_dim, save_training_curves

    d = Path(run_dir)
    if model.spec.is_image:
        save_test_completions(d / "completions.png", model, test_x, seed=seed)
    save_training_curves(d / "training_curves.png", records)
    save_kl_per_dim(d / "kl_per_dim.png", evaluation["kl_per_dim"], posterior_mean_var=evaluation.get("posterior_mean_var"))


def build_completion_report(run: LoadedRun, test: Split, *, evaluation: dict[str, Any] | None = None,
                            out: str | Path | None = None) -> Path:
    """The completion run's page (default ``RUN/report.html``): its metrics (the conditional -ELBO and
    NLL of the missing part), training curves and completion strips of test examples."""
    from ..figures import save_training_curves
    from ..training.trainer import read_history
    from .report_html import CSS, _img, _summary_cards, model_settings, resolved_model_config

    d = run.dir
    out = Path(out) if out is not None else d / "report.html"
    if evaluation is None and (d / "evaluation.json").exists():
        evaluation = json.loads((d / "evaluation.json").read_text())
    records = read_history(d)
    m, spec = resolved_model_config(run), run.spec
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        curves = d / "training_curves.png"
        if not curves.exists():
            curves = save_training_curves(tmp / "curves.png", records) if records else None
        strips = save_test_completions(tmp / "strips.png", run.model, test.x, seed=run.config.train.seed) \
            if spec.is_image else None
        parts = [
            f"<h1>{html.escape(d.name)}</h1>",
            f"<p class=sub>data: {html.escape(str(run.config.data.source))} · examples of shape {spec.shape} "
            f"({spec.kind}) · completion model (Sohn et al. 2015) · {html.escape(' · '.join(model_settings(run)))} · "
            f"given part: {html.escape(str(m.given))}</p>",
            "<p class=note>Every number is about the missing part given the rest: -ELBO and NLL are "
            "-log p(x_missing | x_given) bounds in nats per example, with each test example's evaluation mask.</p>",
            _summary_cards(evaluation or {}, records),
            "<section><h2>Training</h2>" + _img(curves, "training curves") + "</section>",
            "<section><h2>Completions</h2><p class=note>each row: a test example with its missing part grey, "
            f"{STRIP_DRAWS} completions (z from the prior network), the original</p>"
            + _img(strips, "completions") + "</section>",
            "<section><h2>Configuration</h2><details><summary>config.json</summary><pre>"
            + html.escape(json.dumps(run.config.to_dict(), indent=2)) + "</pre></details></section>",
        ]
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vaekit report: "
                f"{html.escape(d.name)}</title><style>{CSS}</style></head><body>" + "\n".join(parts)
                + "</body></html>\n")
    write_text(out, page)
    return out

