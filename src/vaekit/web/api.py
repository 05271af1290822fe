"""``vaekit serve``: a trained run behind a JSON API (encode, decode, sample, reconstruct, score) with
an OpenAPI 3 schema at ``/openapi.json`` written for this run (its example shape, latent size,
classes and limits), so clients and fuzzers know exactly what to send."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import __version__
from ..apps.service import RunService
from .common import MAX_BODY, endpoint, json_post


def _number() -> dict[str, Any]:
    return {"type": "number"}


def _nested(shape: list[int], leaf: dict[str, Any]) -> dict[str, Any]:
    s = leaf
    for n in reversed(shape):
        s = {"type": "array", "items": s, "minItems": n, "maxItems": n}
    return s


def _batch(item: dict[str, Any], max_batch: int, what: str) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max_batch, "description": what}


def openapi_schema(service: RunService) -> dict[str, Any]:
    """OpenAPI 3.0 for this run: request bodies carry the run's exact shapes."""
    info = service.info()
    shape, mb = info["shape"], service.max_batch
    leaf: dict[str, Any] = {"type": "number"}
    if service.binary_values:
        leaf["enum"] = [0, 1]
    elif service.value_range is not None:
        leaf["minimum"], leaf["maximum"] = service.value_range
    if service.kind == "text":
        x_item = {"type": "string", "minLength": 1, "pattern": r"\S"}
        x_field, x_desc = "text", "sentences"
    elif service.kind == "series":
        x_item = _nested(shape, {**leaf, "nullable": True})
        x_field, x_desc = "x", f"windows of {shape[0]} steps x {shape[1]} channels (null = missing)"
    else:
        flat = _nested([int(service.spec.dim)], leaf)
        x_item = flat if len(shape) == 1 else {"anyOf": [_nested(shape, leaf), flat]}
        x_field, x_desc = "x", (f"examples of shape {'x'.join(map(str, shape))} in the data's own units"
                                + (" (images: values in [0, 1])" if service.spec.is_image else ""))
    cond: dict[str, Any] = {}
    required_cond: list[str] = []
    if service.field == "y":
        label = {"oneOf": [{"type": "string", "enum": service.classes},
                           {"type": "integer", "minimum": 0, "maximum": len(service.classes) - 1}]}
        cond["y"] = {"oneOf": [label, {"type": "array", "items": label, "minItems": 1, "maxItems": mb}],
                     "description": "class of each example (or one for all)"}
        required_cond = ["y"]
    elif service.field == "c":
        cond["c"] = _batch(_nested(list(service.spec.cond_shape or ()), _number()), mb, "one condition per example")
        required_cond = ["c"]

    def body(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {**props, **cond}, "required": required + required_cond,
            "additionalProperties": False}}}}

    xs = {x_field: _batch(x_item, mb, x_desc)}
    zs = {"z": _batch(_nested([service.latent_dim], {"type": "number", "minimum": -1e4, "maximum": 1e4}), mb,
                      f"latent vectors of {service.latent_dim} numbers")}
    matrix = {"type": "array", "items": {"type": "array", "items": _number()}}
    examples = {"type": "array", "items": {}}
    numbers = {"type": "array", "items": _number()}
    err = {"description": "bad request: one line says why",
           "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}},
                                                       "required": ["error"]}}}}

    def op(summary: str, req: dict[str, Any] | None, out: dict[str, Any]) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object", "properties": out, "required": list(out)}}}},
            "400": err, "413": err, "422": err}}
        if req is not None:
            o["requestBody"] = req
        return o

    enc_out = {"mean": matrix, **({"logvar": matrix} if service.has_q else {})}
    paths = {
        "/info": {"get": op("what this run is: model, data shape, latent size, classes, limits", None,
                            {"model": {"type": "string"}, "latent_dim": {"type": "integer"}})},
        "/encode": {"post": op("posterior mean (and log-variance) of q(z|x) for each example",
                               body(xs, [x_field]), enc_out)},
        "/decode": {"post": op("decoder mean E[x|z] for each latent vector", body(zs, ["z"]), {"x": examples})},
        "/sample": {"post": op("new examples from the prior", body({
            "n": {"type": "integer", "minimum": 1, "maximum": mb},
            "temperature": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 100},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}, []), {"x": examples})},
        "/reconstruct": {"post": op("reconstructions through the posterior mean, with their errors",
                                    body(xs, [x_field]), {"x": examples, "recon_nll": numbers})},
        "/score": {"post": op("anomaly score of each example (nats, higher = more anomalous) against the "
                              "run's threshold", body(xs, [x_field]),
                              {"score": numbers, "threshold": {"type": "number", "nullable": True}})},
    }
    return {"openapi": "3.0.3",
            "info": {"title": f"vaekit: run {info['run']}", "version": __version__,
                     "description": f"{info['model']} ({info['arch']}) on {info['kind']} data; request bodies up to "
                                    f"{MAX_BODY} bytes, at most {mb} examples per request."},
            "servers": [{"url": "/"}], "paths": paths}


def create_app(service: RunService, *, max_body: int = MAX_BODY) -> Starlette:
    """The ASGI app of ``vaekit serve`` for ``service``; request bodies over ``max_body`` bytes get a 413."""
    schema = openapi_schema(service)


    @endpoint
    async def info(request: Request) -> JSONResponse:
        return JSONResponse(service.info())

    @endpoint
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    @endpoint
    async def index(request: Request) -> JSONResponse:
        return JSONResponse({"run": service.info()["run"], "schema": "/openapi.json",
                             "endpoints": [p for p in schema["paths"]]})

    routes = [Route("/", index), Route("/openapi.json", openapi), Route("/info", info)]
    routes += [Route(f"/{name}", json_post(getattr(service, name), max_body), methods=["POST"])
               for name in ("encode", "decode", "sample", "reconstruct", "score")]
    return Starlette(routes=routes)
