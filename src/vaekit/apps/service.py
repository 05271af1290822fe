"""A trained run as a service: encode, decode, sample, reconstruct and score batches given as plain
Python lists (JSON), every input checked first. ``vaekit serve`` (the JSON API) and ``vaekit
explore`` (the latent-space explorer) are thin web layers over this class.

Inputs are in the user's units, as they would be in a file given to ``--input``: images with
values in [0, 1] (or 0-255), table rows in the training columns' units (standardised here with the
training statistics), series windows (N, T, D) with null for a missing value, sentences as text.
Outputs come back in the same units. A bad request raises :class:`RequestError` with an HTTP
status and one line that names the problem; nothing else is raised for what a client sends.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.batch import Batch, model_inputs
from ..errors import VaekitError
from .common import LoadedRun, class_names, run_inputs, to_original_units
from .conditional import condition_field
from .generate import seeded

MAX_BATCH = 1024
MAX_STEPS = 64
MAX_SCALED = 1e3  # values further than this many training SDs from a column's mean are refused
MAX_TEMPERATURE = 100.0


class RequestError(VaekitError):
    """A request the service cannot serve: ``status`` is the HTTP status (400 malformed, 413 too
    large, 422 well-formed but wrong: shape, values, names)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _kind(run: LoadedRun) -> str:
    if run.spec.kind == "tokens":
        return "text"
    if run.spec.is_sequence:
        return "series"
    return "image" if run.spec.is_image else "table"


def _array(value: Any, name: str, *, allow_null: bool = False) -> np.ndarray:
    """A JSON value -> a float64 array, or RequestError for ragged lists, strings, booleans, objects,
    or non-finite numbers (null only where ``allow_null``: a missing value, NaN)."""
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list, got {type(value).__name__}")
    if not _numbers_only(value, allow_null):
        what = "numbers or null" if allow_null else "numbers"
        raise RequestError(f"{name} must be a rectangular list of {what} (no strings, booleans or objects)")
    try:
        a = np.asarray(_nulls_to_nan(value) if allow_null else value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{name} must be a rectangular list of numbers (equal lengths at every level)") from None
    bad = ~np.isfinite(a) if not allow_null else np.isinf(a)
    if bad.any():
        raise RequestError(f"{name} holds {int(bad.sum())} non-finite values (NaN or infinity); send finite numbers")
    return a


def _nulls_to_nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nulls_to_nan(v) for v in value]
    return value


def _numbers_only(value: list, allow_null: bool) -> bool:
    """Every leaf of nested lists is an int or float (not a bool), or None where allowed."""
    stack = [value]
    while stack:
        for v in stack.pop():
            t = type(v)
            if t is float or t is int:
                continue
            if t is list:
                stack.append(v)
            elif not (v is None and allow_null):
                return False
    return True


def _inwards(v: float, *, up: bool) -> float:
    """v rounded to 6 significant digits towards the inside of an interval (up for a lower bound),
    so that the bound printed in the schema is one the service keeps."""
    if v == 0 or not math.isfinite(v):
        return v
    r = float(f"{v:.5e}")
    step = 10.0 ** (math.floor(math.log10(abs(v))) - 5)
    if up and r < v:
        r = float(f"{r + step:.5e}")
    elif not up and r > v:
        r = float(f"{r - step:.5e}")
    return r


def nats(values: Any) -> list[float]:
    """Scores or negative log-likelihoods as JSON numbers: one that overflowed to +inf (an input far
    from anything the model knows) is reported as the largest float, never as invalid JSON."""
    a = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    return np.where(np.isposinf(a), sys.float_info.max, np.where(np.isneginf(a), -sys.float_info.max, a)).tolist()


def _count(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise RequestError(f"{name} must be positive, got {value!r}")
    return float(value)


class RunService:
    """One loaded run served to many clients. Model calls are serialised by a lock (one model, one
    set of weights); each call is small, so clients are answered in turn.

    ``max_batch`` caps the examples (or latent vectors, or samples) of one request;
    ``contamination`` sets the anomaly threshold: the (1 - contamination) quantile of the scores of
    the run's validation split, as ``vaekit detect`` sets it.
    """

    def __init__(self, run: LoadedRun, *, max_batch: int = MAX_BATCH, contamination: float = 0.05,
                 reference_limit: int = 10000, seed: int = 0) -> None:
        self.run, self.model, self.spec = run, run.model, run.spec
        self.kind = _kind(run)
        self.max_batch, self.contamination, self.seed = int(max_batch), float(contamination), int(seed)
        self.reference_limit = int(reference_limit)
        self.field = condition_field(self.model)  # "y", "c" or None
        self.latent_dim = int(getattr(self.model, "latent_dim", self.model.config.latent_dim))
        self.has_q = bool(getattr(self.model, "has_elbo", True))
        self.classes = class_names(run.source, self.spec.num_classes) if self.spec.num_classes else []
        self._lock = threading.Lock()
        self._scorer: dict[str, Any] | None = None
        self.value_range, self.binary_values = self._value_range()

    def _value_range(self) -> tuple[tuple[float, float] | None, bool]:
        """The input values the schema declares and the service accepts, in the data's units, and
        whether only 0 and 1 are (binary data the run does not binarize itself). Images: [0, 255]
        (values above 1 are read as 8-bit). Scaled tables and series: the values within ``MAX_SCALED``
        training SDs of every column's mean (the same interval for all columns), when it holds every
        column's usual values (mean +- 10 SD); else None, and each column is checked on its own."""
        src, spec = self.run.source, self.spec
        if self.kind == "text":
            return None, False
        binary = spec.kind == "binary" and src.get("binarize", "none") == "none"
        if spec.is_image:
            return (0.0, 255.0), binary
        stats = src.get("scaler") or src.get("standardize")
        if not stats:
            return ((0.0, 1.0) if spec.kind in ("binary", "8bit", "unit") else None), binary
        mean, sd = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
        lo, hi = float((mean - MAX_SCALED * sd).max()), float((mean + MAX_SCALED * sd).min())
        if not (lo <= (mean - 10 * sd).min() and hi >= (mean + 10 * sd).max()):
            return None, binary
        # rounded inwards to 6 significant digits: a bound the schema prints is one the service keeps
        return (_inwards(lo, up=True), _inwards(hi, up=False)), binary

    def check_range(self, a: np.ndarray, name: str) -> None:
        """RequestError for values outside ``value_range`` (NaN, a missing value, passes)."""
        if self.value_range is None:
            return
        lo, hi = self.value_range
        with np.errstate(invalid="ignore"):
            out = (a < lo) | (a > hi)
        if out.any():
            raise RequestError(f"{name} has {int(out.sum())} values outside [{lo:g}, {hi:g}], the range this run "
                               f"takes (see /openapi.json)")
        if self.binary_values and not np.isin(a[~np.isnan(a)], (0.0, 1.0)).all():
            raise RequestError(f"{name}: this run was trained on binary data; send 0 or 1 (binarize first)")

    # -- what the run is -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        cfg = self.run.config.model
        return {"run": self.run.dir.name, "model": cfg.model, "arch": cfg.arch, "likelihood": cfg.likelihood,
                "kind": self.kind, "shape": list(self.spec.shape), "value_kind": self.spec.kind,
                "latent_dim": self.latent_dim, "conditional": self.field, "classes": self.classes,
                "columns": list(self.run.source.get("columns") or []),
                "max_batch": self.max_batch, "can_score": True, "has_encoder_variance": self.has_q}

    # -- parsing requests ----------------------------------------------------------------------------
    def allowed(self, kind: str) -> tuple[str, ...]:
        """The fields a request body of ``kind`` ("examples", "latents", "sample") may hold."""
        own = {"examples": ("text",) if self.kind == "text" else ("x",), "latents": ("z",),
               "sample": ("n", "temperature", "seed")}[kind]
        return own + ((self.field,) if self.field else ())

    def fields(self, body: dict[str, Any], kind: str) -> None:
        """RequestError for a field the operation does not take (a misspelt option is not ignored)."""
        allowed = self.allowed(kind)
        extra = [k for k in body if k not in allowed]
        if extra:
            hint = " (this run is not conditional)" if set(extra) & {"y", "c"} and not self.field else ""
            raise RequestError(f"unknown field {extra[0]!r}{hint}; this operation takes {', '.join(allowed)}")

    def examples(self, body: dict[str, Any], name: str = "x") -> Batch:
        """The examples of a request (``body[name]``, plus ``y`` or ``c`` for a conditional run) as
        a Batch in model units."""
        if self.kind == "text":
            return self._sentences(body.get("text", body.get(name)), "text" if "text" in body else name)
        if name not in body:
            raise RequestError(f"the request has no {name!r}: send {{\"{name}\": [example, ...]}}")
        a = _array(body[name], name, allow_null=self.kind == "series")
        if a.ndim == 0 or len(a) == 0:
            raise RequestError(f"{name} must be a non-empty list of examples")
        if len(a) > self.max_batch:
            raise RequestError(f"{name} has {len(a)} examples; at most {self.max_batch} per request")
        self.check_range(a, name)
        b = self._series(a, name) if self.kind == "series" else self._prepared(a, name)
        return self._with_condition(b, body)

    def _shape_error(self, a: np.ndarray, name: str) -> RequestError:
        want = "x".join(str(s) for s in self.spec.shape)
        return RequestError(f"{name} has shape {list(a.shape)}; this run takes examples of shape {want} "
                            f"(or flat rows of {self.spec.dim} values), as a list of examples")

    def _prepared(self, a: np.ndarray, name: str) -> Batch:
        """Image / table examples through the same preparation as a file given to --input."""
        shape = tuple(self.spec.shape)
        if a.ndim < 2 or (tuple(a.shape[1:]) != shape and int(np.prod(a.shape[1:])) != self.spec.dim):
            raise self._shape_error(a, name)
        if self.spec.is_image and tuple(a.shape[1:]) != shape:
            a = a.reshape(len(a), *shape)
        from ..data.datasets import load_inputs

        with tempfile.TemporaryDirectory(prefix="vaekit-serve-") as tmp:
            path = Path(tmp) / "x.npy"
            if self.spec.is_image and a.max() > 1:
                a = a / 255.0  # 8-bit pixel values (0-255)
            np.save(path, a.reshape(len(a), -1) if not self.spec.is_image else a)
            try:
                s = load_inputs(str(path), self.spec, self.run.source)
            except VaekitError as e:
                raise RequestError(f"{name}: {str(e).replace(str(path) + ': ', '')}") from None
        far = float(s.x.abs().max())
        if not far <= MAX_SCALED:
            raise RequestError(f"{name} has values {far:.3g} training standard deviations from the training mean; "
                               "send values in the training data's range")
        return Batch(s.x)

    def _series(self, a: np.ndarray, name: str) -> Batch:
        t, d = self.spec.shape
        if a.ndim == 2 and d == 1:
            a = a[..., None]
        if a.ndim != 3 or a.shape[1:] != (t, d):
            raise RequestError(f"{name} has shape {list(a.shape)}; this run takes windows of {t} steps x {d} "
                               f"channels (null for a missing value)")
        scaler = self.run.source.get("scaler")
        if scaler:
            a = (a - np.asarray(scaler["mean"])) / np.asarray(scaler["std"])
        if np.nanmax(np.abs(a), initial=0.0) > MAX_SCALED:
            raise RequestError(f"{name} has values more than {MAX_SCALED:g} training standard deviations from the "
                               "training mean; send values in the training data's range")
        mask = ~np.isnan(a)
        if not mask.any(axis=(1, 2)).all():
            raise RequestError(f"{name}: some windows have no observed value")
        x = torch.from_numpy(np.nan_to_num(a, nan=0.0)).float()
        return Batch(x, mask=torch.from_numpy(mask).float())

    def _sentences(self, value: Any, name: str) -> Batch:
        from ..data.text import encode, tokenize

        if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
            raise RequestError(f"{name} must be a non-empty list of sentences (strings)")
        if len(value) > self.max_batch:
            raise RequestError(f"{name} has {len(value)} sentences; at most {self.max_batch} per request")
        src = self.run.source
        toks = [tokenize(s, src["tokens"]) for s in value]
        if any(not t for t in toks):
            raise RequestError(f"{name}: an empty sentence; send at least one token")
        ids, mask, _ = encode(toks, src["vocab"], self.spec.shape[0])
        return Batch(torch.from_numpy(ids).reshape(len(ids), -1, 1).float(),
                     mask=torch.from_numpy(mask).reshape(len(ids), -1, 1).float())

    def _with_condition(self, b: Batch, body: dict[str, Any]) -> Batch:
        if self.field is None:
            for f in ("y", "c"):
                if body.get(f) is not None:
                    raise RequestError(f"this run is not conditional; drop {f!r}")
            return b
        if self.field == "y":
            return b.replace(y=self.labels(body.get("y"), len(b)))
        if body.get("c") is None:
            raise RequestError("this run is conditional on c: send \"c\" with one condition per example")
        c = _array(body["c"], "c")
        if c.shape != (len(b), *self.spec.cond_shape):
            raise RequestError(f"c has shape {list(c.shape)}; expected {[len(b), *self.spec.cond_shape]}")
        return b.replace(c=torch.from_numpy(c).float())

    def labels(self, value: Any, n: int) -> torch.Tensor:
        """Class labels of a request (names or indices, one per example, or one for all)."""
        if self.field != "y":
            if value is not None:
                raise RequestError("this run does not take class labels; drop \"y\"")
            return None  # type: ignore[return-value]
        if value is None:
            raise RequestError(f"this run is conditional on labels: send \"y\" (one of {', '.join(self.classes)})")
        values = value if isinstance(value, list) else [value]
        if len(values) == 1 and n > 1:
            values = values * n
        if len(values) != n:
            raise RequestError(f"y has {len(values)} labels for {n} examples")
        out = []
        for v in values:
            if isinstance(v, str) and v in self.classes:
                out.append(self.classes.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(self.classes):
                out.append(v)
            else:
                raise RequestError(f"unknown label {v!r}; this run's classes: {', '.join(self.classes)}")
        return torch.tensor(out, dtype=torch.long)

    def latents(self, body: dict[str, Any], name: str = "z") -> torch.Tensor:
        if name not in body:
            raise RequestError(f"the request has no {name!r}: send {{\"{name}\": [[{self.latent_dim} numbers], ...]}}")
        z = _array(body[name], name)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or len(z) == 0:
            raise RequestError(f"{name} has shape {list(z.shape)}; send a list of latent vectors of "
                               f"{self.latent_dim} numbers")
        if len(z) > self.max_batch:
            raise RequestError(f"{name} has {len(z)} vectors; at most {self.max_batch} per request")
        if np.abs(z).max() > 1e4:
            raise RequestError(f"{name} has values beyond 1e4 in size; latent codes live near the prior N(0, I)")
        return torch.from_numpy(z).to(self.model.dtype)

    # -- outputs -------------------------------------------------------------------------------------
    def outputs(self, x: torch.Tensor) -> list[Any]:
        """Model-unit examples -> lists in the user's units (sentences for a text run)."""
        if self.kind == "text":
            from ..data.text import ids_to_text

            ids = x.reshape(len(x), -1).round().long().numpy()
            return ids_to_text(ids, np.ones_like(ids), self.run.source["vocab"], self.run.source["tokens"])
        return to_original_units(x, self.run.source).astype(np.float64).tolist()

    def _cond(self, b: Batch) -> dict[str, torch.Tensor]:
        dev = self.model.device
        return {f: v.to(dev) for f, v in model_inputs(self.model, b).items() if v is not None}

    # -- operations ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, body: dict[str, Any]) -> dict[str, Any]:
        self.fields(body, "examples")
        b = self.examples(body)
        with self._lock:
            mu, logvar = self.model.encode(b.x.to(self.model.device, self.model.dtype), **self._cond(b))
        out = {"mean": mu.float().cpu().tolist()}
        if self.has_q:
            out["logvar"] = logvar.float().cpu().tolist()
        return out

    @torch.no_grad()
    def decode(self, body: dict[str, Any]) -> dict[str, Any]:
        self.fields(body, "latents")
        z = self.latents(body)
        cond = self._decode_cond(body, len(z))
        with self._lock:
            x = self._decode_mean(z.to(self.model.device), cond)
        return {"x": self.outputs(x)}

    def _decode_cond(self, body: dict[str, Any], n: int) -> dict[str, torch.Tensor]:
        if self.field == "y":
            return {"y": self.labels(body.get("y"), n).to(self.model.device)}
        if self.field == "c":
            c = _array(body.get("c"), "c") if body.get("c") is not None else None
            if c is None or c.shape != (n, *self.spec.cond_shape):
                raise RequestError(f"this run is conditional on c: send \"c\" of shape {[n, *self.spec.cond_shape]}")
            return {"c": torch.from_numpy(c).to(self.model.device, self.model.dtype)}
        for f in ("y", "c"):
            if body.get(f) is not None:
                raise RequestError(f"this run is not conditional; drop {f!r}")
        return {}

    def _decode_mean(self, z: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "text":
            return self.model.generate_tokens(z, greedy=True).float().cpu()
        return self.model.decode_mean(z, **cond).float().cpu()

    @torch.no_grad()
    def sample(self, body: dict[str, Any]) -> dict[str, Any]:
        self.fields(body, "sample")
        n = _count(body.get("n", 1), "n", 1, self.max_batch)
        temperature = _number(body.get("temperature", 1.0), "temperature", positive=True)
        if temperature > MAX_TEMPERATURE:
            raise RequestError(f"temperature must be at most {MAX_TEMPERATURE:g}, got {temperature:g}")
        seed = _count(body["seed"], "seed", 0, 2**31 - 1) if "seed" in body else None
        cond = self._decode_cond(body, n)
        if self.kind == "text":
            with self._lock, seeded(seed):
                z = self.model.prior_sample(n) * temperature
                x = self.model.generate_tokens(z, temperature=temperature).float().cpu()
            return {"x": self.outputs(x)}
        from .generate import sample

        with self._lock:
            x = sample(self.model, n, temperature=temperature, seed=seed,
                       **{f: v.cpu() for f, v in cond.items()})
        return {"x": self.outputs(x)}

    @torch.no_grad()
    def reconstruct(self, body: dict[str, Any]) -> dict[str, Any]:
        from .generate import reconstruct

        self.fields(body, "examples")
        b = self.examples(body)
        with self._lock:
            x_hat, err = reconstruct(self.model, b)
        if self.kind == "text":
            return {"x": self.outputs(x_hat.argmax(-1, keepdim=True) if x_hat.shape[-1] > 1 else x_hat),
                    "recon_nll": nats(err["recon_nll"])}
        return {"x": self.outputs(x_hat), "sq_error": nats(err["sq_error"]), "recon_nll": nats(err["recon_nll"])}

    @torch.no_grad()
    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        self.fields(body, "examples")
        b = self.examples(body)
        scorer = self.scorer()
        with self._lock:
            s = self._scores(b, scorer)
        thr = scorer["threshold"]
        return {"score": nats(s), "anomalous": [bool(v > thr) for v in s] if thr is not None else None,
                "threshold": thr, "score_kind": scorer["kind"], "contamination": self.contamination}

    # -- scores --------------------------------------------------------------------------------------
    def scorer(self) -> dict[str, Any]:
        """The anomaly score and its threshold, fitted once on the validation split (lazily: a run
        that is never asked for scores never reads its data)."""
        if self._scorer is not None:
            return self._scorer
        from .anomaly import threshold_for

        kind = ("excess" if self.field is None else "elbo") if self.has_q and self.kind in ("image", "table") \
            else ("elbo" if self.has_q else "recon")
        sc: dict[str, Any] = {"kind": kind, "correction": None, "threshold": None, "from": None}
        ref = None
        for split in ("val", "test"):
            try:
                ref = run_inputs(self.run, None, split=split, limit=self.reference_limit)
                sc["from"] = split
                break
            except VaekitError:
                continue
        with self._lock:
            if kind == "excess":
                from .anomaly import crn_terms, fit_correction

                sc["correction"] = fit_correction(self.model, ref.x, crn_terms(self.model, ref.x, seed=self.seed)) \
                    if ref is not None else None
                if sc["correction"] is None:
                    sc["kind"] = kind = "elbo"
            if ref is not None:
                sc["threshold"] = threshold_for(self._scores(ref, sc).numpy(), self.contamination)
        self._scorer = sc
        return sc

    def _scores(self, b: Batch, sc: dict[str, Any]) -> torch.Tensor:
        if sc["kind"] == "excess":
            from .anomaly import crn_terms, excess_score

            return excess_score(b.x, crn_terms(self.model, b.x, seed=self.seed), sc["correction"], self.model)
        from ..metrics import per_example_scores

        return per_example_scores(self.model, b, kind=sc["kind"], seed=self.seed).double()


def check_steps(steps: Any) -> int:
    return _count(steps, "steps", 2, MAX_STEPS)


__all__: Sequence[str] = ["RequestError", "RunService", "MAX_BATCH", "check_steps"]
