"""``vaekit serve`` (a JSON API over a run) and ``vaekit explore`` (the latent-space explorer in the
browser). Both need the ``explore`` extra; both bind to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ._shared import open_from_args


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by vaekit train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", default=None, help="folder holding the run's dataset files (if moved)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--contamination", type=float, default=0.05,
                   help="anomaly threshold: the share of the validation split flagged (default 0.05)")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a run as a JSON API (encode, decode, sample, reconstruct, score)")
    _add_common(s)
    s.add_argument("--max-batch", type=int, default=1024, help="most examples per request (default 1024)")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("explore", help="explore a run's latent space in the browser")
    _add_common(e)
    e.add_argument("--map", choices=["pca", "tsne"], default="pca", help="how the map is drawn (default pca)")
    e.add_argument("--points", type=int, default=2000, help="examples of the test split on the map (default 2000)")
    e.set_defaults(func=cmd_explore)


def _service(args: argparse.Namespace, **kw):
    from ..apps.anomaly import check_contamination
    from ..apps.service import RunService
    from ..web.common import check_address, need_web

    need_web()
    check_address(args.host, args.port)
    check_contamination(args.contamination)
    run = open_from_args(args)
    if args.data_dir is not None:  # the run's data moved: read the splits from there
        run.config.data.data_dir = args.data_dir
    return RunService(run, contamination=args.contamination, **kw)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    service = _service(args, max_batch=args.max_batch)
    from ..web.api import create_app
    from ..web.common import serve_app

    return serve_app(create_app(service), args.host, args.port, f"serving {service.run.dir} (schema: /openapi.json)")


def cmd_explore(args: argparse.Namespace) -> int:
    if args.points < 2:
        raise UsageError(f"--points must be at least 2, got {args.points}")
    service = _service(args)
    from ..web.common import serve_app
    from ..web.explorer import Explorer, create_app

    explorer = Explorer(service, points=args.points, method=args.map)
    return serve_app(create_app(explorer), args.host, args.port, f"exploring {service.run.dir}")
