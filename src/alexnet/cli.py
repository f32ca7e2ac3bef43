"""The ``alexnet`` command line: argument parsing only; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import UserError


def _summary(args: argparse.Namespace) -> int:
    from .summary import format_table, summarize

    s = summarize(args.model, args.input_size, args.num_classes)
    print(json.dumps(s) if args.json else format_table(s))
    return 0


def _add_summary(sub: argparse._SubParsersAction) -> None:
    from .models import list_models

    p = sub.add_parser("summary", help="print the layer table measured from the live model")
    p.add_argument("--model", default="alexnet", choices=list_models())
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's native size)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_summary)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_summary]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky et al. 2012): train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError) as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"alexnet {args.command}: error: no such file: {e.filename or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
