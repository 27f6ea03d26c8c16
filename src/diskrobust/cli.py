"""`python -m diskrobust <command> ...`: one entry point, each command owned by the module that does the work.

Commands are imported lazily so `--help` and one command do not pay for the others' imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module providing add_arguments(parser) and run(args), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("diskrobust.data.phantom_cli", "Generate the built-in lumbar MR phantom dataset."),
    "phantom-stats": ("diskrobust.data.phantom_stats_cli", "Disk-population statistics of a dataset and the study's go/no-go gate."),
    "convert": ("diskrobust.data.convert_cli", "Convert SPIDER / MRSpineSeg / generic data to the project's format."),
    "study": ("diskrobust.study.cli", "Run the shape-variation x training-method x attack study."),
    "demo": ("diskrobust.study.demo", "Small end-to-end demo on the phantom (the README's main job)."),
    "certify": ("diskrobust.defenses.certify_cli", "Certified per-point bounds of a model by median smoothing."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diskrobust", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(sp)
        except ModuleNotFoundError as err:  # a command whose module is not installed yet is listed but not runnable
            if err.name != module:
                raise
            sp.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"command {args.command!r} is not available in this build", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)
