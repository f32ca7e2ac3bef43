"""argparse types and the options several subcommands share (cli.py builds the parsers from them)."""

from __future__ import annotations

import argparse


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive(text: str) -> int:
    """argparse type of every count and size option: a whole number of at least 1."""
    if (value := _whole(text)) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def workers(text: str) -> int:
    """argparse type of --workers: a count of processes, or -1 for one per core."""
    if (value := _whole(text)) < -1:
        raise argparse.ArgumentTypeError(f"must be 0 or more (or -1: one per core), got {value}")
    return value


def quality(text: str) -> int:
    if (value := positive(text)) > 100:
        raise argparse.ArgumentTypeError(f"JPEG quality is 1-100, got {value}")
    return value


def show_defaults(p: argparse.ArgumentParser, recipe_keys: dict[str, str]) -> None:
    """End every option's help with its default, read from the parser itself (so --help and the CLI reference
    cannot disagree with the code): ``(default: X)``, or for an option that sets a config key and defaults to None,
    the recipe's value of that key. Help that already says what its default means (``default: the run's own
    data``) is left as it is."""
    for a in p._actions:
        if not a.option_strings or a.default == argparse.SUPPRESS or "default" in (a.help or ""):
            continue
        if a.default is None and a.dest in recipe_keys:
            said = f"the recipe's {recipe_keys[a.dest]}"
        elif a.default is None or a.default is False:  # (a switch, or an option with no value until given)
            continue
        else:
            said = "%(default)s"
        a.help = f"{a.help} (default: {said})" if a.help else f"default: {said}"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def add_amp(p: argparse.ArgumentParser) -> None:
    from .config import AMP_CHOICES

    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="auto",
        help="precision: auto = training's compute path for this device (bf16 where native, else fp32)",
    )


def add_tta(p: argparse.ArgumentParser) -> None:
    from .config import TTA_CHOICES

    p.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="center",
        help="test-time views: centre crop, centre + mirror, or the paper's 10 crops",
    )


def add_force(p: argparse.ArgumentParser, what: str = "an existing file") -> None:
    p.add_argument("--force", action="store_true", help=f"overwrite {what}")


def add_samples(p: argparse.ArgumentParser) -> None:
    """The data figures' sample sizes (figures, report)."""
    p.add_argument("--max-val", type=positive, default=2000, help="validation images used (seeded sample)")
    p.add_argument("--max-train", type=positive, default=5000, help="training images searched for neighbours")
