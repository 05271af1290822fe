"""Explorer and server latency for the seed MNIST model (issue 21).

    .venv/bin/python bench/bench_explore.py [--run RUN] [--epochs 2] [--data-dir ../shared/data/mnist]

Without --run it trains the seed model (MLP 784-400-20, Bernoulli, grey-level MNIST, batch 128) for
--epochs into bench/out/explore-run (the latency does not depend on how long it trained).

1. Explorer, measured from the browser (headless Chromium via Playwright): `vaekit explore RUN`; the
   page times each decode from the request to the decoded image drawn (window.vaekitTimings). N
   clicks at random map positions and N slider moves, each waited for; p50 / p95 / max in ms.
2. Server: `vaekit serve RUN`; keep-alive HTTP clients in threads send single-example decodes
   ({"z": one 20-D vector}) and 64-example encodes (64 MNIST test images as JSON lists), with 1 and 8
   concurrent clients; requests per second and p50 / p95 latency. Clients and server share this
   machine's cores, so the 8-client rows measure the pair, not the server alone.

Prints a markdown table and writes bench/out/explore.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _mnist import load_mnist  # noqa: E402

OUT = ROOT / "bench" / "out"


def vaekit(*argv: str) -> list[str]:
    return [sys.executable, "-m", "vaekit.cli", *argv]


def start(argv: list[str], what: str) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(vaekit(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while what not in line and proc.poll() is None:
        line = proc.stdout.readline()
    if what not in line:
        raise SystemExit(f"{argv[0]} did not start: {proc.stderr.read()}")
    url = line.split(" at ", 1)[1].split()[0].rstrip("/")
    return proc, url, int(url.rsplit(":", 1)[1])


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max())}


def bench_explorer(run: Path, n: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    proc, url, _ = start(["explore", str(run), "--port", "0"], "exploring")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            pg = browser.new_page(viewport={"width": 1400, "height": 950})
            pg.goto(url + "/")
            pg.wait_for_function("window.vaekitReady === true", timeout=120000)
            box = pg.locator("#map").bounding_box()
            rng = np.random.default_rng(0)

            def wait(k: int) -> None:
                pg.wait_for_function(f"window.vaekitTimings.length >= {k} && !S.busy && !S.pending")

            # warm-up, not counted
            pg.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            wait(1)
            start_clicks = pg.evaluate("window.vaekitTimings.length")
            for i in range(n):
                u, v = rng.uniform(0.1, 0.9, size=2)
                pg.mouse.click(box["x"] + u * box["width"], box["y"] + v * box["height"])
                wait(start_clicks + i + 1)
            clicks = pg.evaluate("window.vaekitTimings")[start_clicks:]
            start_sliders = len(clicks) + start_clicks
            for i in range(n):
                k = i % 4
                pg.evaluate(f"""() => {{ const s = document.querySelectorAll('#sliders input')[{k}];
                    s.value = String(Number(s.min) + Math.random() * (Number(s.max) - Number(s.min)));
                    s.dispatchEvent(new Event('input')); }}""")
                wait(start_sliders + i + 1)
            sliders = pg.evaluate("window.vaekitTimings")[start_sliders:]
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"click": stats(clicks), "slider": stats(sliders)}


def bench_server(run: Path, requests: int) -> list[dict]:
    proc, url, port = start(["serve", str(run), "--port", "0"], "serving")
    x, _ = load_mnist(ARGS.data_dir, "test")
    encode_body = json.dumps({"x": x[:64].round(4).tolist()}).encode()
    rng = np.random.default_rng(0)
    rows = []
    try:
        for name, path, bodies in (
                ("decode, 1 example", "/decode",
                 [json.dumps({"z": [rng.normal(size=20).round(4).tolist()]}).encode() for _ in range(64)]),
                ("encode, 64 examples", "/encode", [encode_body])):
            for clients in (1, 8):
                per = max(10, requests // clients)
                lat: list[float] = []
                lock = threading.Lock()
                errors: list[int] = []

                def client(k: int) -> None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    mine = []
                    for i in range(per + 3):
                        body = bodies[(k + i) % len(bodies)]
                        t0 = time.perf_counter()
                        conn.request("POST", path, body, {"content-type": "application/json"})
                        r = conn.getresponse()
                        r.read()
                        if r.status != 200:
                            errors.append(r.status)
                        if i >= 3:  # the first requests warm the connection
                            mine.append(1000 * (time.perf_counter() - t0))
                    conn.close()
                    with lock:
                        lat.extend(mine)

                threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                if errors:
                    raise SystemExit(f"{name}: {len(errors)} requests failed ({errors[:3]})")
                rows.append({"request": name, "clients": clients, "requests_per_s": len(lat) / wall, **stats(lat)})
                print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--n", type=int, default=200, help="clicks and slider moves each")
    p.add_argument("--requests", type=int, default=400, help="requests per server row (split among clients)")
    ARGS = p.parse_args()
    run = Path(ARGS.run) if ARGS.run else OUT / "explore-run"
    if not ARGS.run:
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(vaekit("train", "--data", "mnist", "--data-dir", ARGS.data_dir, "--hidden", "400",
                              "--latent-dim", "20", "--likelihood", "bernoulli", "--batch-size", "128",
                              "--epochs", str(ARGS.epochs), "--out", str(run), "--quiet"), check=True)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{__import__('os').cpu_count()} cores", "run": str(run),
           "command": "python bench/bench_explore.py " + " ".join(sys.argv[1:])}
    res["explorer"] = bench_explorer(run, ARGS.n)
    print(json.dumps(res["explorer"]), flush=True)
    res["server"] = bench_server(run, ARGS.requests)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "explore.json").write_text(json.dumps(res, indent=2))
    print("\n| explorer action | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for k, s in res["explorer"].items():
        print(f"| {k} to decoded image drawn | {s['n']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['max_ms']:.1f} |")
    print("\n| server request | clients | requests/s | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for r in res["server"]:
        print(f"| {r['request']} | {r['clients']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
