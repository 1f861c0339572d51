"""The ``unifuse`` command: one entry point for every recipe and tool, beside the ``python -m`` forms.

    unifuse gifnet fit [...]                 # = python -m recipes.gifnet fit [...]
    unifuse lure predict --ckpt_path ...     # = python -m recipes.lure predict ...
    unifuse evaluate --pairs ... --fused ... # = python -m recipes.evaluate ...
    unifuse shards build|inspect|verify ...  # = python -m datamodules.shards ...
    unifuse demo                             # = python -m datamodules.demo

Each name maps to the ``main(argv)`` of the module that ``python -m`` runs, so both forms take the
same arguments and print the same ``--help``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "gifnet": ("recipes.gifnet", "train, evaluate and run GIFNet (three-branch task interaction)"),
    "lure": ("recipes.lure", "train, evaluate and run LURE (text-guided degradation-aware fusion)"),
    "upfusion": ("recipes.upfusion", "train, evaluate and run UP-Fusion (one network for all modalities)"),
    "cmifusion": ("recipes.cmifusion", "train, evaluate and run CMI-Fusion (image-text interaction)"),
    "evaluate": ("recipes.evaluate", "score folders of fused images with the standard fusion metrics"),
    "shards": ("datamodules.shards.cli", "build, inspect and verify WebDataset shards"),
    "demo": ("datamodules.demo", "build the built-in demo set"),
}
"""Command name -> (module whose ``main(argv)`` runs it, one line of help)."""


def available_commands() -> dict[str, tuple[str, str]]:
    """The commands whose module is part of this installation (a family may not be installed yet)."""
    return {name: entry for name, entry in COMMANDS.items() if importlib.util.find_spec(entry[0]) is not None}


def usage() -> str:
    lines = ["usage: unifuse COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in available_commands().items()]
    lines += ["", "`unifuse COMMAND --help` lists the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    commands = available_commands()
    if argv[0] not in commands:
        print(f"unifuse: unknown command {argv[0]!r}; choose one of: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[argv[0]][0])
    sys.argv = [f"unifuse {argv[0]}", *argv[1:]]  # what argparse and LightningCLI print as the program name
    result = module.main(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
