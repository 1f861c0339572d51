"""Build, inspect and verify WebDataset shards of fusion and restoration samples.

    python -m datamodules.shards build OUT --a DIR --b DIR [--gt DIR] --task ivif [options]
    python -m datamodules.shards build OUT --a DEGRADED --gt CLEAN --task restore --degradation noise:2
    python -m datamodules.shards build --layout msrs SRC OUT     # a download in a published layout
    python -m datamodules.shards synthesize --layout roadscene SRC OUT --task mfif   # GIFNet-style pairs
    python -m datamodules.shards build-all DOWNLOADS OUT        # every known download + synthetic sets
    python -m datamodules.shards layouts                        # the layouts --layout knows
    python -m datamodules.shards inspect OUT            # per-task / per-degradation totals
    python -m datamodules.shards verify OUT             # decode every member, list what is broken

See :mod:`datamodules.shards.build` for how pairs are made and checked, and
:mod:`datamodules.shards.layouts` for the published layouts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from datamodules.images import ImageError
from datamodules.schema import BIT_DEPTHS, TASKS
from datamodules.shards import layouts
from datamodules.shards.build import (
    WriteOptions,
    build_all,
    build_from_folders,
    build_layout,
    build_synthetic,
    parse_size,
)
from datamodules.shards.verify import format_totals, inspect, verify
from datamodules.shards.writer import INDEX_NAME
from datamodules.synthesis import SYNTHETIC_TASKS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="pair folders by file stem, or read a published layout; write shards")
    build.add_argument(
        "paths",
        nargs="+",
        metavar="[SRC] OUT",
        help="output folder (shards and index.json); with --layout, first the download folder SRC",
    )
    build.add_argument("--layout", help=f"a published layout: {', '.join(layouts.LAYOUTS)} (see `layouts`)")
    build.add_argument("--a", help="first source: infrared, near focus, under-exposed, MRI, NIR, or degraded")
    build.add_argument("--b", help="second source: visible, far focus, over-exposed, CT/PET/SPECT, visible")
    build.add_argument("--gt", help="optional target folder (all-in-focus, well-exposed, clean)")
    build.add_argument("--task", choices=TASKS, help="the task of the folders' pairs (a layout names its own)")
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
    build.add_argument("--prefix", help="shard file prefix (default: the task, or the layout's name)")
    build.add_argument(
        "--resize", help="align pairs of different sizes: a or b (resize the others to it), or crop (centre overlap)"
    )
    build.add_argument("--limit", type=int, help="with --layout: only the first N pairs of each split (a quick look)")
    build.add_argument(
        "--bit-depth",
        type=int,
        choices=BIT_DEPTHS[1:],
        help="effective bits of the 16-bit images (readers divide by 2**N - 1); default: the smallest of "
        "10, 12, 14, 16 that holds the largest value of each source",
    )
    _write_options(build)

    synthesize = commands.add_parser(
        "synthesize", help="GIFNet-style synthetic pairs from the visible images of an infrared-visible download"
    )
    synthesize.add_argument("src", help="the download folder")
    synthesize.add_argument("out", help="output folder (shards and index.json)")
    synthesize.add_argument("--layout", required=True, help="its infrared-visible layout: roadscene, msrs, llvip, ...")
    synthesize.add_argument(
        "--task",
        required=True,
        choices=SYNTHETIC_TASKS,
        help="mfif: near/far focus + sharp target; meif: under/over exposure + target; restore: degraded + clean",
    )
    synthesize.add_argument("--prefix", help="shard file prefix (default: LAYOUT-TASK)")
    _synthesis_options(synthesize)
    _write_options(synthesize)

    everything = commands.add_parser(
        "build-all", help="every download in a folder, named after its layout, plus synthetic sets from the IVIF ones"
    )
    everything.add_argument("src", help="folder of downloads: roadscene/, harvard/, mfifb/, MSRS/, ...")
    everything.add_argument("out", help="output folder: one shard folder per source inside")
    everything.add_argument(
        "--synthesize",
        default=",".join(SYNTHETIC_TASKS),
        metavar="TASKS",
        help=f"synthetic sets per IVIF download, comma-separated (default {','.join(SYNTHETIC_TASKS)}; '' for none)",
    )
    _synthesis_options(everything)
    _write_options(everything, sizes=False)

    commands.add_parser("layouts", help="list the published layouts that `build --layout` knows")

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
            index = _build(args)
            print(f"wrote {args.paths[-1]}/{INDEX_NAME}")
            print(format_totals(index["totals"]))
        elif args.command == "synthesize":
            index = build_synthetic(
                args.out,
                args.layout,
                args.src,
                args.task,
                seed=args.seed,
                variants=args.variants,
                limit=args.limit,
                prefix=args.prefix,
                holdout=args.holdout,
                options=_options(args),
            )
            print(f"wrote {args.out}/{INDEX_NAME}")
            print(format_totals(index["totals"]))
        elif args.command == "build-all":
            tasks = [task for task in args.synthesize.split(",") if task]
            unknown = sorted(set(tasks) - set(SYNTHETIC_TASKS))
            if unknown:
                raise ValueError(f"--synthesize {','.join(unknown)}: choose from {', '.join(SYNTHETIC_TASKS)}")
            totals = build_all(
                args.src,
                args.out,
                tasks,
                seed=args.seed,
                variants=args.variants,
                limit=args.limit,
                holdout=args.holdout,
                options=_options(args),
            )
            for folder, folder_totals in totals.items():
                print(f"{folder}:\n  " + format_totals(folder_totals).replace("\n", "\n  "))
        elif args.command == "layouts":
            for layout in layouts.LAYOUTS.values():
                print(layout.describe())
                for form in layout.forms:
                    print(f"    {form.describe()}")
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


def _write_options(parser: argparse.ArgumentParser, sizes: bool = True) -> None:
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)")
    if sizes:
        parser.add_argument(
            "--maxsize",
            type=parse_size,
            default=parse_size("1G"),
            help="bytes per shard at most, e.g. 500M (default 1G)",
        )
    parser.add_argument(
        "--level",
        type=int,
        default=0,
        choices=range(10),
        metavar="0-9",
        help="PNG deflate level: 0 (default) stores pixels uncompressed, fastest to decode; 1-9 compress "
        "(about half the size on photographs, about twice the decoding work)",
    )
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> WriteOptions:
    maxsize = getattr(args, "maxsize", WriteOptions.maxsize)
    return WriteOptions(args.maxcount, maxsize, args.level, args.workers, progress=not args.quiet)


def _synthesis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice (default 0): same seed, same shards"
    )
    parser.add_argument(
        "--variants",
        type=int,
        default=1,
        help="per photograph: focus or exposure pairs, or severities per degradation kind (default 1, at most 3)",
    )
    parser.add_argument("--limit", type=int, help="only the first N pairs of each split (a quick look)")
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="leave the last N photographs of each split out of every shard (build-all writes their synthetic "
        "samples as validation pair folders OUT/<layout>-holdout/)",
    )


def _build(args: argparse.Namespace) -> dict[str, Any]:
    """``build`` from a published layout (SRC OUT) or from --a/--b/--gt folders (OUT)."""
    if args.layout:
        if len(args.paths) != 2:
            raise ValueError("build --layout NAME takes two paths: the download folder SRC, then the output folder OUT")
        given = [f"--{name}" for name in ("a", "b", "gt", "task", "source") if getattr(args, name)]
        given += ["--degradation"] * bool(args.degradation) + ["--synthetic"] * args.synthetic
        if given:
            raise ValueError(f"--layout says where the files are and what they are; drop {', '.join(given)}")
        return build_layout(
            args.paths[1],
            args.layout,
            args.paths[0],
            resize=args.resize,
            limit=args.limit,
            prefix=args.prefix,
            prompt=args.prompt,
            options=_options(args),
            bit_depth=args.bit_depth,
        )
    if len(args.paths) != 1 or args.a is None or args.task is None:
        raise ValueError("build takes OUT --a DIR [--b DIR] [--gt DIR] --task TASK, or --layout NAME SRC OUT")
    if args.limit is not None:
        raise ValueError("--limit works with --layout only")
    return build_from_folders(
        args.paths[0],
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
        bit_depth=args.bit_depth,
    )
