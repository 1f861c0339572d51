"""Build, inspect and verify WebDataset shards of fusion and restoration samples.

    python -m datamodules.shards build OUT --a DIR --b DIR [--gt DIR] --task ivif [options]
    python -m datamodules.shards build OUT --a DEGRADED --gt CLEAN --task restore --degradation noise:2
    python -m datamodules.shards inspect OUT            # per-task / per-degradation totals
    python -m datamodules.shards verify OUT             # decode every member, list what is broken

See :mod:`datamodules.shards.build` for how pairs are made and checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from datamodules.images import ImageError
from datamodules.schema import TASKS
from datamodules.shards.build import build_from_folders, parse_size
from datamodules.shards.verify import format_totals, inspect, verify
from datamodules.shards.writer import INDEX_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="pair folders by file stem and write shards")
    build.add_argument("out", help="output folder (shards and index.json)")
    build.add_argument(
        "--a", required=True, help="first source: infrared, near focus, under-exposed, MRI, NIR, or degraded"
    )
    build.add_argument("--b", help="second source: visible, far focus, over-exposed, CT/PET/SPECT, visible")
    build.add_argument("--gt", help="optional target folder (all-in-focus, well-exposed, clean)")
    build.add_argument("--task", required=True, choices=TASKS)
    build.add_argument(
        "--degradation",
        action="append",
        default=[],
        metavar="KIND[:SEVERITY]",
        help="tag every sample (repeatable), e.g. noise:2",
    )
    build.add_argument("--prompt", help="text prompt stored with every sample")
    build.add_argument("--source", default="", help="dataset name recorded in each sample (e.g. MSRS)")
    build.add_argument("--synthetic", action="store_true", help="mark the samples as synthetic")
    build.add_argument("--prefix", help="shard file prefix (default: the task)")
    build.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)")
    build.add_argument(
        "--maxsize", type=parse_size, default=parse_size("1G"), help="bytes per shard at most, e.g. 500M (default 1G)"
    )
    build.add_argument(
        "--resize", help="align pairs of different sizes: a or b (resize the others to it), or crop (centre overlap)"
    )
    build.add_argument(
        "--level",
        type=int,
        default=0,
        choices=range(10),
        metavar="0-9",
        help="PNG deflate level: 0 (default) stores pixels uncompressed, fastest to decode; 1-9 compress "
        "(about half the size on photographs, about twice the decoding work)",
    )
    build.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    inspect_parser = commands.add_parser("inspect", help="print the per-task / per-degradation totals of a shard set")
    inspect_parser.add_argument("path", help="shard folder or its index.json")
    inspect_parser.add_argument("--json", action="store_true", help="print the totals as JSON")

    verify_parser = commands.add_parser(
        "verify", help="decode every member; list what is broken (exit 1 if anything is)"
    )
    verify_parser.add_argument("urls", nargs="+", help="shard folder, index.json, shard files or brace patterns")
    verify_parser.add_argument("--quiet", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            index = build_from_folders(
                args.out,
                a=args.a,
                b=args.b,
                gt=args.gt,
                task=args.task,
                degradations=args.degradation,
                prompt=args.prompt,
                source=args.source,
                synthetic=args.synthetic,
                prefix=args.prefix,
                maxcount=args.maxcount,
                maxsize=args.maxsize,
                resize=args.resize,
                level=args.level,
                workers=args.workers,
                progress=not args.quiet,
            )
            print(f"wrote {args.out}/{INDEX_NAME}")
            print(format_totals(index["totals"]))
        elif args.command == "inspect":
            totals = inspect(args.path)
            print(json.dumps(totals, indent=1) if args.json else format_totals(totals))
        else:
            good, problems = verify(args.urls if len(args.urls) > 1 else args.urls[0], progress=not args.quiet)
            print(f"{good} samples decode cleanly; {len(problems)} problem(s)")
            for problem in problems:
                print(f"  BROKEN {problem}")
            return 1 if problems else 0
    except (ImageError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
