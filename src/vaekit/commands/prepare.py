"""``vaekit prepare``: an image folder or a CSV table as a folder of .npy shards, for training
without decoding the images again (and from disk, with ``--data-in-memory no``)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert an image folder or a CSV table into a folder of .npy shards")
    p.add_argument("source_path", metavar="SOURCE", help="an image folder (class subfolders become labels) or a .csv table")
    p.add_argument("--out", required=True, help="the shard folder to write (must not exist, or be empty)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to S x S (default: their common size)")
    p.add_argument("--shard-size", default=None,
                   help="examples per shard (e.g. 10000) or bytes per shard (e.g. 256MB, the default)")
    p.add_argument("--label-column", default=None, help="CSV: the column holding labels (default: label, y, class...)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: min(4, CPUs))")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no line per shard written")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    log = None if args.quiet or args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    m = prepare(args.source_path, args.out, image_size=args.image_size, shard_size=args.shard_size,
                label_column=args.label_column, workers=args.workers, log=log)
    if args.json:
        print(json.dumps(m))
        return 0
    classes = f", {len(m['classes'])} classes" if m.get("classes") else ""
    print(f"wrote {m['count']} examples of shape {tuple(m['shape'])} ({m['dtype']}{classes}) in {len(m['shards'])} "
          f"shard(s) to {args.out}")
    print(f"train on it: vaekit train --data {args.out} [--data-in-memory auto|yes|no] ...")
    return 0
