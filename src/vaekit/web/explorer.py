"""``vaekit explore``: the latent-space explorer. One page (HTML/JS/canvas shipped in
``vaekit/web/static``, no build step, no CDN) over a small JSON API:

- ``GET /api/state``: the run, the 2-D map of its test split (PCA, or t-SNE), labels, anomaly
  scores and flags, the latent dimensions that carry the most KL, and every example's view;
- ``POST /api/decode``: a map position or a latent vector -> the decoded example (and its place);
- ``POST /api/interpolate``: two examples -> the decoded path between them (linear or spherical);
- ``POST /api/upload``: a file (image, CSV row, series, sentences) -> its place on the map, its
  reconstruction and its anomaly score against the run's threshold.

A map position becomes a latent vector exactly for PCA (the mean plus the two axes; the other
directions held at the mean) and, for t-SNE (which has no inverse), as the distance-weighted mean of
the codes of the nearest examples on the map.
"""

from __future__ import annotations

import base64
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..apps.common import run_inputs, to_original_units
from ..apps.latent import embed, pca_2d, slerp
from ..apps.service import RequestError, RunService, check_steps, nats
from ..data.batch import Batch
from ..errors import VaekitError
from .common import endpoint, json_post, read_body

STATIC = Path(__file__).with_name("static")
UPLOAD_LIMIT = 8 * 1024 * 1024
UPLOAD_SCORED = 4096  # examples of one upload that are scored
SHOWN = 8  # of which are shown
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NEIGHBOURS = 8


class Explorer:
    """The state behind one explorer page: the embedded examples, their map and how to move
    between map positions and latent vectors."""

    def __init__(self, service: RunService, *, points: int = 2000, method: str = "pca", seed: int = 0,
                 sliders: int = 8) -> None:
        if method not in ("pca", "tsne"):
            raise RequestError(f"--map must be pca or tsne, got {method!r}")
        self.service, self.method = service, method
        run = service.run
        split, s = None, None
        for name in ("test", "val", "train"):
            try:
                s = run_inputs(run, None, split=name, limit=points)
                split = name
                break
            except VaekitError:
                continue
        if s is None:
            raise RequestError("the run's data cannot be read (moved? give --data-dir)")
        self.split = split
        self.batch = s
        with service._lock:
            mu, var = embed(service.model, self.batch)
        self.mu = mu.double().numpy()
        if service.has_q:
            kl = 0.5 * (mu.double() ** 2 + var.double() - 1 - var.double().clamp_min(1e-30).log()).mean(0)
        else:  # a deterministic encoder: the spread of the codes stands in for the information they carry
            kl = mu.double().var(0)
        self.kl = kl.numpy()
        order = np.argsort(-self.kl)[:min(sliders, service.latent_dim)]
        self.dims = [int(d) for d in order]
        self.centre = self.mu.mean(0)
        self._map(seed)
        sc = service.scorer()
        with service._lock:
            self.scores = service._scores(self.batch, sc).numpy()
        self.threshold = sc["threshold"]

    # -- the map --------------------------------------------------------------------------------------
    def _map(self, seed: int) -> None:
        a, d = self.mu, self.mu.shape[1]
        c = a - self.centre
        if d == 1:
            self.axes = np.array([[1.0]])
            self.coords = np.column_stack([c[:, 0], np.zeros(len(a))])
            self.axes_label = "z (1 latent dimension)"
        elif self.method == "pca" or len(a) < 5:
            self.coords, _, self.axes, share = pca_2d(a)
            self.axes_label = f"PCA of the {d}-D posterior means ({100 * share:.0f}% of their variance)"
            self.method = "pca"
        else:
            from sklearn.manifold import TSNE

            perp = float(min(30.0, max(2.0, (len(a) - 1) / 3)))
            self.axes = None
            self.coords = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(a)
            self.axes_label = f"t-SNE of the {d}-D posterior means (positions between examples are interpolated)"

    def z_at(self, point: np.ndarray) -> np.ndarray:
        """A map position -> a latent vector (D,)."""
        if self.axes is not None:
            return self.centre + point[:len(self.axes)] @ self.axes
        d = np.linalg.norm(self.coords - point, axis=1)
        near = np.argsort(d)[:NEIGHBOURS]
        w = 1.0 / (d[near] + 1e-6)
        return (w[:, None] * self.mu[near]).sum(0) / w.sum()

    def place(self, z: np.ndarray) -> list[float]:
        """A latent vector -> its map position."""
        if self.axes is not None:
            p = np.zeros(2)
            p[:len(self.axes)] = (z - self.centre) @ self.axes.T
            return p.tolist()
        d = np.linalg.norm(self.mu - z, axis=1)
        near = np.argsort(d)[:NEIGHBOURS]
        w = 1.0 / (d[near] + 1e-6)
        return ((w[:, None] * self.coords[near]).sum(0) / w.sum()).tolist()

    # -- views ----------------------------------------------------------------------------------------
    def views(self, x: torch.Tensor) -> list[dict[str, Any]]:
        """Model-unit examples -> what the page draws: images as base64 8-bit pixels (H, W, C),
        table rows as values with their columns, series as channels of values, sentences as text."""
        svc = self.service
        if svc.kind == "text":
            return [{"type": "text", "text": t} for t in svc.outputs(x)]
        orig = to_original_units(x, svc.run.source)
        if svc.kind == "image":
            c, h, w = svc.spec.shape
            px = np.clip(np.rint(orig * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
            return [{"type": "image", "width": w, "height": h, "channels": c,
                     "data": base64.b64encode(p.tobytes()).decode("ascii")} for p in px]
        if svc.kind == "series":
            cols = list(svc.run.source.get("columns") or [f"x{i}" for i in range(svc.spec.shape[-1])])
            return [{"type": "series", "channels": cols, "values": np.asarray(o).T.tolist()} for o in orig]
        cols = list(svc.run.source.get("columns") or [f"x{i}" for i in range(svc.spec.dim)])
        scaled = x.reshape(len(x), -1).double().numpy()
        return [{"type": "table", "columns": cols, "values": o.reshape(-1).tolist(), "scaled": s.tolist()}
                for o, s in zip(orig, scaled)]

    def state(self) -> dict[str, Any]:
        svc = self.service
        y = self.batch.y
        labels = None if y is None else [int(v) for v in y.tolist()]
        return {"info": svc.info(), "split": self.split, "method": self.method, "axes_label": self.axes_label,
                "coords": self.coords.round(5).tolist(), "labels": labels, "classes": svc.classes,
                "scores": nats(self.scores), "threshold": self.threshold,
                "flags": None if self.threshold is None else [bool(v > self.threshold) for v in self.scores],
                "score_kind": svc.scorer()["kind"], "contamination": svc.contamination,
                "dims": [{"index": d, "kl": float(self.kl[d]), "low": float(self.mu[:, d].min()),
                          "high": float(self.mu[:, d].max())} for d in self.dims],
                "latent_dim": svc.latent_dim, "codes": self.mu.round(5).tolist(),
                "examples": self.views(self.batch.x),
                "cannot": self.cannot()}

    def cannot(self) -> list[str]:
        """What this run cannot show, in words."""
        svc, out = self.service, []
        if self.batch.y is None:
            out.append("no labels in this run's data: the map is coloured by anomaly score only")
        if svc.field == "c":
            out.append("conditions (c) are held at the clicked example's own (no condition editor)")
        if not svc.has_q:
            out.append("a deterministic encoder: no posterior variance; sliders follow the codes' spread")
        if self.method == "tsne":
            out.append("t-SNE has no inverse: a clicked position decodes the weighted codes of its nearest examples")
        return out

    # -- operations -----------------------------------------------------------------------------------
    def _latent(self, body: dict[str, Any]) -> np.ndarray:
        if "z" in body:
            z = self.service.latents({"z": [body["z"]]})[0].double().numpy()
        elif "point" in body:
            p = body["point"]
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                  and math.isfinite(v) for v in p)):
                raise RequestError("point must be two finite numbers [u, v]")
            z = self.z_at(np.asarray(p, dtype=np.float64))
        else:
            raise RequestError("send \"point\": [u, v] (a map position) or \"z\": [latent vector]")
        return z

    def _cond(self, body: dict[str, Any], n: int, index: int | None = None) -> dict[str, Any]:
        svc = self.service
        if svc.field == "y":
            y = body.get("y")
            if y is None:
                if self.batch.y is None:
                    raise RequestError("this run is conditional on labels: pick a class")
                y = int(self.batch.y[index if index is not None else 0])
            return {"y": svc.labels(y, 1).expand(n)}
        if svc.field == "c":
            c = self.batch.c[(index if index is not None else 0):][:1]
            return {"c": c.expand(n, *c.shape[1:])}
        return {}

    def decode(self, body: dict[str, Any]) -> dict[str, Any]:
        z = self._latent(body)
        index = body.get("index")
        if index is not None:
            index = self._index(index, "index")
        cond = self._cond(body, 1, index)
        svc = self.service
        dev = svc.model.device
        with svc._lock, torch.no_grad():
            x = svc._decode_mean(torch.from_numpy(z[None]).to(dev, svc.model.dtype),
                                 {f: v.to(dev) for f, v in cond.items()})
        return {"z": z.tolist(), "map": self.place(z), "view": self.views(x)[0]}

    def _index(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self.mu):
            raise RequestError(f"{name} must be an example index in 0..{len(self.mu) - 1}, got {value!r}")
        return value

    def interpolate(self, body: dict[str, Any]) -> dict[str, Any]:
        a, b = self._index(body.get("a"), "a"), self._index(body.get("b"), "b")
        steps = check_steps(body.get("steps", 10))
        method = body.get("method", "linear")
        if method not in ("linear", "slerp"):
            raise RequestError(f"method must be linear or slerp, got {method!r}")
        za, zb = (torch.from_numpy(self.mu[i]) for i in (a, b))
        t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        z = (1 - t[:, None]) * za + t[:, None] * zb if method == "linear" else slerp(za, zb, t)
        cond = self._cond(body, steps, a)
        svc = self.service
        dev = svc.model.device
        with svc._lock, torch.no_grad():
            x = svc._decode_mean(z.to(dev, svc.model.dtype), {f: v.to(dev) for f, v in cond.items()})
        zn = z.numpy()
        return {"frames": self.views(x), "map": [self.place(v) for v in zn]}

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        """An uploaded file -> its examples scored (the first ``UPLOAD_SCORED``), and ``SHOWN`` of them
        placed and reconstructed: all when there are that few, else the highest-scoring ones (the
        windows of a long series, the rows of a table: where to look first)."""
        svc = self.service
        suffix = Path(name).suffix.lower()
        if not data:
            raise RequestError("the uploaded file is empty", 400)
        with tempfile.TemporaryDirectory(prefix="vaekit-upload-") as tmp:
            folder = Path(tmp) / "upload"  # one image is read as a folder of one
            folder.mkdir()
            path = folder / f"upload{suffix}"
            path.write_bytes(data)
            b = self._read_upload(path, suffix)
        n_all = len(b)
        b = b[:UPLOAD_SCORED]
        sc = svc.scorer()
        with svc._lock, torch.no_grad():
            all_scores = svc._scores(b, sc).numpy()
        order = np.arange(len(b)) if len(b) <= SHOWN else np.sort(np.argsort(-all_scores)[:SHOWN])
        shown = b.select(torch.as_tensor(order))
        scores = all_scores[order]
        with svc._lock, torch.no_grad():
            mu, _ = embed(svc.model, shown)
            if svc.kind == "text":  # a sentence is reconstructed by decoding its code greedily, word after word
                x_hat = svc.model.generate_tokens(mu.to(svc.model.device, svc.model.dtype), greedy=True).float().cpu()
            else:
                from ..apps.generate import reconstruct

                x_hat, _ = reconstruct(svc.model, shown)
        thr = self.threshold
        views, recons = self.views(shown.x), self.views(x_hat)
        items = [{"index": int(i), "view": v, "reconstruction": r, "score": nats([s])[0],
                  "anomalous": None if thr is None else bool(s > thr), "map": self.place(z)}
                 for i, v, r, s, z in zip(order, views, recons, scores, mu.double().numpy())]
        flagged = None if thr is None else int((all_scores > thr).sum())
        return {"items": items, "threshold": thr, "score_kind": sc["kind"], "examples": n_all,
                "scored": len(b), "flagged": flagged, "highest_first": len(b) > SHOWN}

    def _read_upload(self, path: Path, suffix: str) -> Batch:
        svc = self.service
        if svc.kind == "text":
            try:
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            except UnicodeDecodeError:
                raise RequestError("the uploaded file is not UTF-8 text: send sentences, one per line") from None
            return svc.examples({"text": lines[:svc.max_batch]})
        if svc.kind == "series":
            if suffix not in (".csv", ".tsv", ".npy"):
                raise RequestError(f"cannot read a {suffix or 'suffix-less'} file here; send a series as .csv, .tsv or .npy")
            from ..data.datasets import load_inputs

            try:
                return load_inputs(str(path), svc.spec, svc.run.source)
            except VaekitError as e:
                raise RequestError(str(e).replace(str(path), "the upload")) from None
        allowed = (".csv", ".npy", ".npz") + (IMAGE_SUFFIXES if svc.kind == "image" else ())
        if suffix not in allowed:
            raise RequestError(f"cannot read a {suffix or 'suffix-less'} file here; send {', '.join(allowed)}")
        try:  # (run_inputs: a label-conditional run takes its own classes only)
            s = run_inputs(svc.run, str(path.parent if suffix in IMAGE_SUFFIXES else path))
        except VaekitError as e:
            raise RequestError(str(e).replace(str(path), "the upload").replace(str(path.parent), "the upload")) from None
        except (OSError, ValueError) as e:
            raise RequestError(f"the upload cannot be read ({type(e).__name__}); send {', '.join(allowed)}") from None
        if len(s.x) == 0:
            raise RequestError("the upload holds no examples")
        b = Batch(s.x, s.y, s.c)
        if svc.field == "y" and (b.y is None or (b.y < 0).any()):
            raise RequestError("this run is conditional on labels; upload labelled examples (a CSV with the label column)")
        if svc.field == "c" and b.c is None:
            raise RequestError("this run is conditional on c; upload examples with their condition columns")
        return b


def create_app(explorer: Explorer) -> Starlette:
    """The ASGI app of ``vaekit explore``."""
    state: dict[str, Any] = {}

    @endpoint
    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @endpoint
    async def get_state(request: Request) -> JSONResponse:
        if "body" not in state:
            state["body"] = await run_in_threadpool(explorer.state)
        return JSONResponse(state["body"])


    @endpoint
    async def upload(request: Request) -> JSONResponse:
        name = request.query_params.get("name", "")
        data = await read_body(request, UPLOAD_LIMIT)
        return JSONResponse(await run_in_threadpool(explorer.upload, name, data))

    routes = [Route("/", index), Route("/api/state", get_state),
              Route("/api/decode", json_post(explorer.decode), methods=["POST"]),
              Route("/api/interpolate", json_post(explorer.interpolate), methods=["POST"]),
              Route("/api/upload", upload, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes)
