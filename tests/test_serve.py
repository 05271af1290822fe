"""``vaekit serve`` (JSON API) and ``vaekit explore`` (the explorer's JSON routes): answers, one-line
4xx for every kind of bad request, the schema fuzzed, and real servers under concurrent clients."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from vaekit.apps.common import open_run  # noqa: E402
from vaekit.apps.service import RunService  # noqa: E402
from vaekit.cli import main  # noqa: E402
from vaekit.web import api, explorer  # noqa: E402

from cli_helpers import cli  # noqa: E402


def _train(out: Path, *argv) -> Path:
    assert main(["train", *map(str, argv), "--out", str(out), "--quiet", "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve-table")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    x = np.column_stack([z[:, 0], z[:, 1], z[:, 0] + z[:, 1], 2 * z[:, 0] - z[:, 1], z[:, 1] * 0.5]) * 3 + 10
    x += rng.normal(scale=0.1, size=x.shape)
    lines = ["a,b,c,d,e"] + [",".join(f"{v:.5f}" for v in row) for row in x]
    (d / "table.csv").write_text("\n".join(lines) + "\n")
    return _train(d / "run", "--data", d / "table.csv", "--epochs", 8, "--latent-dim", 2, "--hidden", 32,
                  "--batch-size", 32)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve-image")
    return _train(d / "run", "--data", "digits", "--epochs", 2, "--latent-dim", 4, "--hidden", 64)


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve-cvae")
    return _train(d / "run", "--data", "digits", "--model", "cvae", "--epochs", 1, "--latent-dim", 4, "--hidden", 64)


def _client(run_dir: Path, **kw) -> tuple[TestClient, RunService]:
    svc = RunService(open_run(run_dir, device="cpu"), **kw)
    return TestClient(api.create_app(svc)), svc


def _table_rows(n: int = 3) -> list[list[float]]:
    return [[10.0, 10.0, 10.0, 10.0, 10.0]] * n


# -- the JSON API -------------------------------------------------------------------------------------------
def test_api_answers_every_operation(table_run):
    c, svc = _client(table_run)
    schema = c.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) >= {"/encode", "/decode", "/sample", "/reconstruct", "/score", "/info"}
    x_schema = schema["paths"]["/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert x_schema["properties"]["x"]["items"]["minItems"] == 5  # this run's rows have 5 columns
    enc = c.post("/encode", json={"x": _table_rows(3)}).json()
    assert np.shape(enc["mean"]) == (3, 2) and np.shape(enc["logvar"]) == (3, 2)
    dec = c.post("/decode", json={"z": [[0.0, 0.0], [1.0, -1.0]]}).json()
    assert np.shape(dec["x"]) == (2, 5)
    # outputs in the data's own units (the columns were centred near 10), not standardised ones
    assert 5 < np.mean(dec["x"]) < 15
    s1 = c.post("/sample", json={"n": 4, "seed": 3}).json()["x"]
    s2 = c.post("/sample", json={"n": 4, "seed": 3}).json()["x"]
    s3 = c.post("/sample", json={"n": 4, "seed": 4}).json()["x"]
    assert np.shape(s1) == (4, 5) and s1 == s2 and s1 != s3
    rec = c.post("/reconstruct", json={"x": _table_rows(2)}).json()
    assert np.shape(rec["x"]) == (2, 5) and len(rec["recon_nll"]) == 2
    far = [[60.0, -40.0, 60.0, -40.0, 60.0]]
    sc = c.post("/score", json={"x": _table_rows(1) + far}).json()
    assert sc["threshold"] is not None and math.isfinite(sc["threshold"])
    assert sc["score"][1] > sc["score"][0] and sc["anomalous"] == [s > sc["threshold"] for s in sc["score"]]
    assert sc["anomalous"][1] is True


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "no body"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"x": [[1, 2, 3, 4, 5], [1, 2]]}', 422, "rectangular"),
    (b'{"x": [[1, 2, 3, 4]]}', 422, "shape"),
    (b'{"x": [[1, 2, 3, 4, NaN]]}', 422, "non-finite"),
    (b'{"x": [[1, 2, 3, 4, Infinity]]}', 422, "non-finite"),
    (b'{"x": "rows"}', 422, "must be a list"),
    (b'{"x": [["a", "b", "c", "d", "e"]]}', 422, "numbers"),
    (b'{"x": []}', 422, "non-empty"),
    (b'{"y": 1, "x": [[1, 2, 3, 4, 5]]}', 422, "not conditional"),
    (b'{"rows": [[1, 2, 3, 4, 5]]}', 422, "unknown field 'rows'"),
    (b'{}', 422, "no 'x'"),
    (b'{"x": [[1, 2, 3, true, 5]]}', 422, "booleans"),
    (b'{"x": [[1, 2, 3, null, 5]]}', 422, "numbers"),
    (b'{"x": [[1, 2, 3, 4, 1e300]]}', 422, "outside"),
])
def test_api_bad_requests_get_one_line_4xx(table_run, body, status, words):
    c, _ = _client(table_run)
    r = c.post("/encode", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err and "\n" not in err


def test_api_limits_and_latent_checks(table_run):
    c, _ = _client(table_run, max_batch=8)
    assert c.post("/encode", json={"x": _table_rows(9)}).status_code == 422  # the schema's maxItems
    assert c.post("/sample", json={"n": 9}).status_code == 422
    for bad in ({"z": [[0.0]]}, {"z": [[0.0, 1e9]]}, {"z": [[0.0, None]]}, {"z": []}):
        r = c.post("/decode", json=bad)
        assert r.status_code == 422 and r.json()["error"]
    for bad in ({"n": 0}, {"n": 2.5}, {"n": True}, {"temperature": 0}, {"temperature": "hot"}, {"seed": -1}):
        assert c.post("/sample", json=bad).status_code == 422, bad


def test_api_body_limit(table_run):
    c = TestClient(api.create_app(RunService(open_run(table_run, device="cpu")), max_body=1000))
    r = c.post("/encode", json={"x": _table_rows(100)})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    chunks = (b'{"x": [' if i == 0 else b"[1,2,3,4,5]," for i in range(200))  # no Content-Length: streamed
    r = c.post("/encode", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.post("/encode", json={"x": _table_rows(2)}).status_code == 200


def test_api_images_and_conditional_labels(image_run, cvae_run):
    c, svc = _client(image_run)
    flat = np.zeros((2, 64)).tolist()
    nested = np.zeros((2, 1, 8, 8)).tolist()
    a, b = (c.post("/encode", json={"x": x}).json()["mean"] for x in (flat, nested))
    assert np.allclose(a, b) and np.shape(a) == (2, 4)
    r = c.post("/encode", json={"x": np.full((1, 64), 300.0).tolist()})
    assert r.status_code == 422 and "outside [0, 255]" in r.json()["error"]
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8))  # 8-bit pixels are read as 8-bit images are
    as_bytes = c.post("/encode", json={"x": pixels.tolist()}).json()["mean"]
    as_unit = c.post("/encode", json={"x": (pixels / 255).tolist()}).json()["mean"]
    assert np.allclose(as_bytes, as_unit, atol=1e-6)
    assert np.shape(c.post("/decode", json={"z": [[0, 0, 0, 0]]}).json()["x"]) == (1, 1, 8, 8)

    c, svc = _client(cvae_run)
    assert c.post("/encode", json={"x": flat}).status_code == 422  # labels are needed
    e3 = c.post("/encode", json={"x": flat, "y": [3, 3]}).json()["mean"]
    e5 = c.post("/encode", json={"x": flat, "y": "5"}).json()["mean"]  # one label for all, by name
    assert not np.allclose(e3, e5)
    r = c.post("/decode", json={"z": [[0, 0, 0, 0]], "y": 11})
    assert r.status_code == 422 and "unknown label" in r.json()["error"]
    d3 = c.post("/decode", json={"z": [[0, 0, 0, 0]], "y": 3}).json()["x"]
    d7 = c.post("/decode", json={"z": [[0, 0, 0, 0]], "y": 7}).json()["x"]
    assert not np.allclose(d3, d7)
    assert np.shape(c.post("/sample", json={"n": 3, "y": [0, 1, 2]}).json()["x"]) == (3, 1, 8, 8)


@pytest.fixture(scope="module")
def fuzz_app(table_run):
    return api.create_app(RunService(open_run(table_run, device="cpu"), max_batch=64))


def test_api_fuzzed_from_its_schema_never_answers_5xx(fuzz_app):
    """Bodies generated from the run's own schema, valid and invalid (schemathesis' positive and negative
    modes), against every operation: never a 5xx; every schema-valid body answered (2xx), every invalid
    one refused with a 4xx and a one-line reason."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    seen: dict[int, int] = {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/encode", "/decode", "/sample", "/reconstruct", "/score"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call()
                code = response.status_code
                seen[code] = seen.get(code, 0) + 1
                assert code < 500, (case.path, case.body, response.text)
                # the schema says exactly what is served: what it allows is answered, what it forbids refused
                if mode == GenerationMode.POSITIVE:
                    assert 200 <= code < 300, (case.path, case.body, response.text)
                else:
                    assert 400 <= code < 500, (case.path, case.body, response.text)
                if code >= 400:
                    assert "\n" not in response.json()["error"]

            try:
                run()
            except Unsatisfiable:  # an operation without a body (GET /info) has nothing to make invalid
                assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET"
    assert any(200 <= s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen


# -- a real server --------------------------------------------------------------------------------------------
def _start(argv: list[str], what: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vaekit.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if what in line or proc.poll() is not None:
            break
    if what not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()}")
    url = line.split(" at ", 1)[1].split()[0]
    return proc, url.rstrip("/")


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_command_binds_loopback_and_serves_concurrent_clients(table_run):
    proc, url = _start(["serve", str(table_run), "--port", "0"], "serving")
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/openapi.json", timeout=10) as r:
            assert "/encode" in json.loads(r.read())["paths"]
        results: list[int] = []
        lock = threading.Lock()

        failures: list[str] = []

        def client(k: int) -> None:
            for i in range(15):
                body = {"x": _table_rows(4)} if i % 3 else {"x": [[1, 2]]}  # every third request is bad
                try:
                    status, out = _post(url + ("/encode" if k % 2 else "/score"), body)
                except Exception as e:  # noqa: BLE001 - reported below with the others
                    with lock:
                        failures.append(f"client {k} request {i}: {e!r}")
                    continue
                with lock:
                    results.append(status if i % 3 else -status)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        assert len(results) == 8 * 15
        assert all(s == 200 for s in results if s > 0) and all(s == -422 for s in results if s < 0)
        assert _post(url + "/decode", {"z": [[0.0, 0.0]]})[0] == 200  # still serving
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("argv, words", [
    (["serve", "RUN", "--port", "70000"], "--port"),
    (["serve", "RUN", "--max-batch", "0"], "--max-batch"),
    (["explore", "RUN", "--points", "1"], "--points"),
    (["serve", "RUN", "--contamination", "0.9"], "contamination"),
    (["serve", "MISSING"], ""),
])
def test_serve_and_explore_bad_flags(table_run, tmp_path, capsys, argv, words):
    argv = [str(table_run) if a == "RUN" else str(tmp_path / "nope") if a == "MISSING" else a for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and words in err


# -- the explorer's routes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explore_client(image_run):
    svc = RunService(open_run(image_run, device="cpu"))
    ex = explorer.Explorer(svc, points=150)
    return TestClient(explorer.create_app(ex)), ex


def test_explorer_state_and_map_inverse(explore_client):
    c, ex = explore_client
    assert "<canvas" in c.get("/").text and c.get("/static/explorer.js").status_code == 200
    st = c.get("/api/state").json()
    assert len(st["coords"]) == len(st["examples"]) == len(st["scores"]) == 150
    assert st["labels"] is not None and len(st["flags"]) == 150
    kls = [d["kl"] for d in st["dims"]]
    assert kls == sorted(kls, reverse=True) and len(kls) == 4
    assert st["examples"][0]["type"] == "image" and st["examples"][0]["width"] == 8
    # a map position decodes to a latent whose place on the map is that position (PCA inverts exactly)
    r = c.post("/api/decode", json={"point": [0.3, -0.2]}).json()
    assert np.allclose(r["map"], [0.3, -0.2], atol=1e-6)
    r2 = c.post("/api/decode", json={"point": [2.0, 1.0]}).json()
    assert r["view"]["data"] != r2["view"]["data"]
    # an example's own code decodes to its reconstruction and sits at its own place
    z = st["codes"][5]
    r3 = c.post("/api/decode", json={"z": z, "index": 5}).json()
    assert np.allclose(r3["map"], st["coords"][5], atol=1e-4)
    for bad in ({"point": [1]}, {"point": [0, float("nan")]}, {"z": [0, 0]}, {}, {"point": [0, 0], "index": 10**6}):
        resp = c.post("/api/decode", content=json.dumps(bad), headers={"content-type": "application/json"})
        assert resp.status_code == 422 and resp.json()["error"], bad


def test_explorer_interpolate_and_upload(explore_client, tmp_path):
    c, ex = explore_client
    st = c.get("/api/state").json()
    r = c.post("/api/interpolate", json={"a": 1, "b": 2, "steps": 7, "method": "slerp"}).json()
    assert len(r["frames"]) == 7 and np.allclose(r["map"][0], st["coords"][1], atol=1e-4)
    assert np.allclose(r["map"][-1], st["coords"][2], atol=1e-4)
    assert c.post("/api/interpolate", json={"a": 1, "b": 2, "steps": 1}).status_code == 422
    assert c.post("/api/interpolate", json={"a": 1, "b": 2, "method": "cubic"}).status_code == 422

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.eye(8) * 255).astype(np.uint8)).save(buf, format="PNG")
    up = c.post("/api/upload?name=mine.png", content=buf.getvalue()).json()
    item = up["items"][0]
    assert item["view"]["type"] == "image" and item["reconstruction"]["type"] == "image"
    assert math.isfinite(item["score"]) and item["anomalous"] == (item["score"] > up["threshold"])
    rows = np.zeros((3, 64))
    csv = "\n".join(",".join("0" for _ in range(64)) for _ in rows) + "\n"
    assert len(c.post("/api/upload?name=rows.csv", content=csv.encode()).json()["items"]) == 3
    for name, data in (("x.png", b"not an image"), ("x.exe", b"MZ"), ("x.png", b"")):
        resp = c.post(f"/api/upload?name={name}", content=data)
        assert 400 <= resp.status_code < 500 and resp.json()["error"], name


def _series_csv(path: Path) -> Path:
    t = np.arange(600)
    x = np.column_stack([np.sin(t / 9), np.cos(t / 13)]) + np.random.default_rng(1).normal(scale=0.05, size=(600, 2))
    path.write_text("time,a,b\n" + "".join(f"{i},{a:.4f},{b:.4f}\n" for i, (a, b) in enumerate(x)))
    return path


@pytest.fixture(scope="module")
def series_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve-series")
    return _train(d / "run", "--data", _series_csv(d / "s.csv"), "--window", 16, "--stride", 4, "--arch", "gru",
                  "--epochs", 1, "--hidden", 16, "--latent-dim", 3)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve-text")
    words = "the cat sat on a mat . a dog ran to the park".split()
    rng = np.random.default_rng(0)
    (d / "s.txt").write_text("".join(" ".join(rng.choice(words, size=rng.integers(3, 7))) + "\n" for _ in range(200)))
    return _train(d / "run", "--data", d / "s.txt", "--tokens", "word", "--arch", "gru", "--epochs", 1,
                  "--hidden", 16, "--latent-dim", 3)


def test_api_series_windows_with_missing_values(series_run):
    c, svc = _client(series_run)
    w = np.sin(np.arange(16) / 9)[:, None].repeat(2, 1).tolist()
    gap = [row[:] for row in w]
    gap[5] = [None, 0.3]
    enc = c.post("/encode", json={"x": [w, gap]}).json()
    assert np.shape(enc["mean"]) == (2, 3)
    assert not np.allclose(enc["mean"][0], enc["mean"][1])  # the missing value is masked, not zero
    sc = c.post("/score", json={"x": [w, gap]}).json()
    assert len(sc["score"]) == 2 and sc["threshold"] is not None
    assert np.shape(c.post("/decode", json={"z": [[0, 0, 0]]}).json()["x"]) == (1, 16, 2)
    assert c.post("/encode", json={"x": [w[:10]]}).status_code == 422  # a window of the wrong length
    assert c.post("/encode", json={"x": [[[None, None]] * 16]}).status_code == 422  # nothing observed


def test_api_sentences(text_run):
    c, svc = _client(text_run)
    enc = c.post("/encode", json={"text": ["the cat sat", "a dog ran to the park"]}).json()
    assert np.shape(enc["mean"]) == (2, 3)
    out = c.post("/sample", json={"n": 3, "seed": 0}).json()["x"]
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert isinstance(c.post("/decode", json={"z": [[0, 0, 0]]}).json()["x"][0], str)
    for bad in ({"text": []}, {"text": [1, 2]}, {"text": [""]}, {"text": "the cat"}):
        assert c.post("/encode", json=bad).status_code == 422, bad


@pytest.mark.parametrize("kind", ["table", "series", "text", "cvae"])
def test_explorer_for_every_kind_of_run(kind, table_run, series_run, text_run, cvae_run, tmp_path):
    run = {"table": table_run, "series": series_run, "text": text_run, "cvae": cvae_run}[kind]
    ex = explorer.Explorer(RunService(open_run(run, device="cpu")), points=40)
    c = TestClient(explorer.create_app(ex))
    st = c.get("/api/state").json()
    n = len(st["coords"])
    assert 2 <= n <= 40 and len(st["examples"]) == n
    view = {"table": "table", "series": "series", "text": "text", "cvae": "image"}[kind]
    assert st["examples"][0]["type"] == view
    body = {"point": [0.1, 0.1], **({"y": 3} if kind == "cvae" else {})}
    r = c.post("/api/decode", json=body).json()
    assert r["view"]["type"] == view
    assert len(c.post("/api/interpolate", json={"a": 0, "b": 1, "steps": 4}).json()["frames"]) == 4
    if kind == "cvae":  # the class picker: the same point decodes differently as another class
        other = c.post("/api/decode", json={**body, "y": 8}).json()
        assert other["view"]["data"] != r["view"]["data"]
        assert st["info"]["conditional"] == "y" and len(st["classes"]) == 10
        return
    if kind == "table":
        data, name = b"a,b,c,d,e\n10,10,10,10,10\n60,-40,60,-40,60\n", "rows.csv"
    elif kind == "series":
        data, name = _series_csv(tmp_path / "up.csv").read_bytes(), "up.csv"
    else:
        data, name = b"the cat sat on a mat\na dog ran\n", "mine.txt"
    up = c.post(f"/api/upload?name={name}", content=data).json()
    assert up["items"] and all(math.isfinite(it["score"]) for it in up["items"])
    assert up["items"][0]["reconstruction"]["type"] == view
    if kind == "table":
        assert up["items"][1]["score"] > up["items"][0]["score"]
    if kind == "series":  # a long series: every window scored, the 8 highest shown in time order
        assert up["examples"] > 8 and up["highest_first"] and len(up["items"]) == 8
        idx = [it["index"] for it in up["items"]]
        assert idx == sorted(idx) and isinstance(up["flagged"], int)
    assert ("no labels" in " ".join(st["cannot"])) == (st["labels"] is None)


def test_explorer_tsne_map(image_run):
    ex = explorer.Explorer(RunService(open_run(image_run, device="cpu")), points=60, method="tsne")
    c = TestClient(explorer.create_app(ex))
    st = c.get("/api/state").json()
    assert st["method"] == "tsne" and "t-SNE" in st["axes_label"] and any("t-SNE" in n for n in st["cannot"])
    # no inverse: a clicked position decodes the weighted codes of its nearest examples, and lands near it
    p = st["coords"][7]
    r = c.post("/api/decode", json={"point": p}).json()
    near = np.linalg.norm(np.asarray(st["coords"]) - np.asarray(r["map"]), axis=1).min()
    assert near < np.ptp(np.asarray(st["coords"])) * 0.2
    with pytest.raises(Exception, match="pca or tsne"):
        explorer.Explorer(RunService(open_run(image_run, device="cpu")), method="umap")


def test_a_port_in_use_is_one_line(table_run, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, out, err = cli(capsys, "serve", table_run, "--port", port)
    assert code == 2 and err.count("\n") == 1 and "cannot listen on 127.0.0.1" in err and "--port" in err
