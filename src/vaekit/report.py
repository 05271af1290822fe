"""After training: test-set evaluation and the run's figures. Also ``vaekit evaluate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import UsageError
from .io import write_json, write_text
from .numerics import fork_rng
from .training.trainer import read_history

if TYPE_CHECKING:
    from .run import Run


def evaluate_run(run_dir: str | Path, *, split: str = "test", data_dir: str | None = None, iw_samples: int | None = None,
                 limit: int | None = None, batch_size: int | None = None, seed: int = 0, device: str = "auto",
                 ais_steps: int | None = None, ais_chains: int | None = None, prior_mmd: bool = False) -> dict[str, Any]:
    """Load a run and its data, and evaluate the best model on ``split`` (see ``metrics.evaluate``).

    ``ais_steps``: also -log p(x) by annealed importance sampling with that many temperatures and
    ``ais_chains`` chains per example (``ais.evaluate_ais``: "ais_nll" and its errors and settings,
    plus "ais_limit"), for any model that scores log p(z) and log p(x|z).
    ``prior_mmd``: also how far the encoded split is from the prior (``prior_code_mmd``: "prior_mmd",
    "prior_mmd_n"), for any model with an encoder and an unconditional prior.
    """
    from .apps.common import open_run, run_inputs
    from .metrics import evaluate

    if batch_size is not None and batch_size < 1:  # checked here: 0 must not mean "the default"
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    run = open_run(run_dir, device=device)
    if ais_steps is not None:
        from .ais import DEFAULT_CHAINS, check_ais, evaluate_ais

        ais_chains = DEFAULT_CHAINS if ais_chains is None else ais_chains
        check_ais(run.model, ais_steps, ais_chains)  # before any data is read or work done
    if prior_mmd:
        _check_prior_codes(run.model)
    x = run_inputs(run, split=split, data_dir=data_dir, limit=limit)  # with labels/conditions, for conditional models
    batch_size = batch_size or run.config.train.eval_batch_size
    res: dict[str, Any] = {}
    if ais_steps is None or callable(getattr(run.model, "elbo_terms", None)):  # a model without an encoder: AIS only
        res = evaluate(run.model, x, batch_size=batch_size, iw_samples=iw_samples, seed=seed)
    if ais_steps is not None:
        res.update(evaluate_ais(run.model, x, steps=ais_steps, chains=ais_chains, batch_size=batch_size, seed=seed))
        res["ais_limit"] = limit
    if prior_mmd:
        res.update(prior_code_mmd(run.model, x, batch_size=batch_size, seed=seed))
    return {"split": split, **res}


#: Seed offset of the --prior-mmd pass, apart from metrics' ELBO (0) and NLL (1) and AIS (2) passes.
_PRIOR_MMD_SEED = 3


def _check_prior_codes(model: Any) -> None:
    """Refuse (one line) a model whose codes have no fixed prior p(z) to compare with."""
    from .modules.priors import Prior

    name = getattr(getattr(model, "config", None), "model", type(model).__name__)
    if not isinstance(getattr(model, "prior", None), Prior) or not callable(getattr(model, "encode", None)):
        raise UsageError(f"--prior-mmd compares a model's codes with its prior p(z); model {name!r} has no encoder "
                         "with a fixed prior (use a run of vae, iwae or aae)")
    cfg = model.config
    if getattr(cfg, "latent_dim2", 0) or getattr(cfg, "conditional_prior", False):
        why = "a second stochastic layer" if getattr(cfg, "latent_dim2", 0) else "a learned conditional prior p(z|c)"
        raise UsageError(f"--prior-mmd needs codes with one fixed prior p(z); this run has {why}, whose codes have none")


def prior_code_mmd(model: Any, data: Any, *, batch_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How far the aggregated posterior is from the prior: the unbiased MMD^2 (``functional.mmd``;
    Gaussian kernels at 0.25-4 times the pooled median distance) between the codes of ``data``
    (a Batch or tensor of examples) and as many draws from the model's prior p(z).

    Codes: the model's own ``codes(x)`` when it defines it (an AAE: mu for a deterministic
    encoder, a draw from q(z|x) for a Gaussian one), else one draw z ~ q(z|x) per example (a
    VAE's aggregated posterior is the mixture of its q(z|x)). Deterministic given ``seed``; the
    caller's RNG is restored. Returns {"prior_mmd": float, "prior_mmd_n": N}.
    """
    from .data.batch import as_batch, model_inputs
    from .functional.mmd import mmd2_unbiased
    from .metrics import _eval_context, _scan

    _check_prior_codes(model)
    data = as_batch(data)
    if len(data) < 2:
        raise UsageError(f"--prior-mmd needs at least 2 examples, got {len(data)}")
    own = getattr(model, "codes", None)

    def fn(b: Any) -> dict[str, torch.Tensor]:
        fields = model_inputs(model, b)
        if callable(own):
            return {"z": own(b.x, **fields)}
        mu, logvar = model.encode(b.x, **fields)
        return {"z": mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)}

    with _eval_context(model, seed + _PRIOR_MMD_SEED, None):
        z = _scan(model, data, batch_size, fn, seed + _PRIOR_MMD_SEED)["z"]
        prior = model.prior.sample(len(z), device=model.device, dtype=model.dtype).to("cpu", torch.float64)
    return {"prior_mmd": float(mmd2_unbiased(z, prior)), "prior_mmd_n": int(len(z))}


def finish_run(run: "Run", figures: bool = True) -> dict[str, Any]:
    """Evaluate the best model on the test split, write ``evaluation.json`` and the figures."""
    from .metrics import evaluate

    assert run.data is not None
    cfg = run.config.train
    res = evaluate(run.model, run.data.test, batch_size=cfg.eval_batch_size, iw_samples=cfg.iw_samples or None,
                   seed=cfg.seed)
    res = {"split": "test", **res}
    if run.dir is not None:
        write_json(run.dir / "evaluation.json", res)
        if figures:
            write_figures(run, res)
            write_report(run, res)
    return res


def write_report(run: "Run", res: dict[str, Any]) -> None:
    """report.html: the run's one-page summary (see ``vaekit.apps.report_html``)."""
    from .apps.common import LoadedRun
    from .apps.report_html import build_report

    assert run.dir is not None and run.data is not None
    # the settings as config.json holds them (resolved: likelihood and widths filled in), as on a page
    # that ``vaekit report`` rebuilds from the directory
    config = dataclasses.replace(run.config, model=run.model.config)
    loaded = LoadedRun(run.dir, run.model, config, run.data.spec, run.data.source)
    build_report(loaded, run.data.test, evaluation=res)


def write_figures(run: "Run", res: dict[str, Any]) -> None:
    """reconstructions.png, samples.png, training_curves.png and kl_per_dim.png in the run dir."""
    from . import figures as fig
    from .apps.generate import figure_samples
    from .data.batch import model_inputs

    assert run.dir is not None and run.data is not None
    if callable(getattr(run.model, "complete", None)):  # completion models: strips instead of reconstructions/samples
        from .apps.complete import write_completion_figures

        return write_completion_figures(run.dir, run.model, run.data.test.x, read_history(run.dir), res,
                                        seed=run.config.train.seed)
    model, d = run.model, run.dir
    if model.spec.kind == "tokens":  # sentences: samples.txt instead of pictures of token ids
        from .data.text import ids_to_text

        with torch.no_grad(), fork_rng(model.device):
            torch.manual_seed(run.config.train.seed)
            ids = model.generate_tokens(model.prior_sample(20), greedy=True)
        write_text(d / "samples.txt", "\n".join(ids_to_text(ids, None, run.data.source["vocab"], run.data.source["tokens"])) + "\n")
        fig.save_training_curves(d / "training_curves.png", read_history(d))
        if "kl_per_dim" in res:
            fig.save_kl_per_dim(d / "kl_per_dim.png", res["kl_per_dim"], posterior_mean_var=res.get("posterior_mean_var"))
        return
    b = run.data.test[:32].to(model.device)  # conditional models read the examples' labels or conditions
    with torch.no_grad(), fork_rng(model.device):
        torch.manual_seed(run.config.train.seed)
        kind = model.spec.kind
        fig.save_reconstructions(d / "reconstructions.png", b.x.cpu(), model.reconstruct(b.x, **model_inputs(model, b)).cpu(),
                                 kind=kind, sequence=model.spec.is_sequence)
        samples, _, nrow = figure_samples(model, run.data.test, seed=None)  # per class: one row each
        fig.save_samples(d / "samples.png", samples, kind=kind, reference=run.data.test.x[:500], nrow=nrow,
                         sequence=model.spec.is_sequence)
    fig.save_training_curves(d / "training_curves.png", read_history(d))
    if "kl_per_dim" in res:  # (a model with no tractable q(z|x) has no KL term)
        fig.save_kl_per_dim(d / "kl_per_dim.png", res["kl_per_dim"], posterior_mean_var=res.get("posterior_mean_var"))
