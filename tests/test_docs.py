"""The manual says what the code does: its reference pages are generated from the parsers, the config dataclasses
and the recipes (scripts/gen_reference.py), --help shows every default, and the README's links lead somewhere.
(test.sh builds the site itself with `mkdocs build --strict`.)"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import yaml

import alexnet
from alexnet import config
from alexnet.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_reference_pages_are_what_the_code_gives() -> None:
    gen = _generator()
    pages = {"cli": gen.cli_page, "config": gen.config_page, "export-format": gen.export_format_page,
             "modules": gen.modules_page}  # fmt: skip
    assert set(pages) == set(gen.PAGES)
    for name, make in pages.items():
        page, text = gen.PAGES[name], make()
        assert page.is_file() and page.read_text() == text, (
            f"{page} is out of date: run python scripts/gen_reference.py"
        )


def test_every_option_and_config_key_is_in_the_reference() -> None:
    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    sections = dict(re.findall(r"(?ms)^## (\S+)\n(.*?)(?=^## |\Z)", cli))
    commands = _subparsers()
    assert set(sections) == set(commands)
    for name, p in commands.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            for opt in a.option_strings or [a.metavar]:
                assert re.search(rf"^\| `{re.escape(opt)}[ `,]", sections[name], re.M), f"{name} {opt} is not in cli.md"
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    for section in config.SECTIONS:
        for f in dataclasses.fields(getattr(config.Config(), section)):
            row = re.search(rf"^\| `{section}\.{f.name}` \|(.*)\|$", page, re.M)
            assert row, f"{section}.{f.name} is not in config.md"
            assert row.group(1).rstrip().split("|")[-1].strip(), f"{section}.{f.name} has no description in config.py"


def test_help_shows_every_default() -> None:
    """Each option that has a default says it in --help (e.g. predict --topk: 5), and each of train's options
    that sets a config key names the recipe's key it defaults to."""
    for name, p in _subparsers().items():
        text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or a.default in (None, False, argparse.SUPPRESS):
                continue
            assert re.search(rf"{re.escape(a.option_strings[-1])}[^(]*?\(default: {re.escape(str(a.default))}\)", text) or (
                "default" in a.help
            ), f"{name} {a.option_strings[-1]}: --help does not show its default {a.default!r}"  # fmt: skip
    train = " ".join(_subparsers()["train"].format_help().split())
    for opt, key in (("--epochs EPOCHS", "train.epochs"), ("--batch-size BATCH_SIZE", "train.batch_size")):
        assert re.search(rf"{opt} [^-]*\(default: the recipe's {key}\)", train), opt
    predict = " ".join(_subparsers()["predict"].format_help().split())
    assert "--topk TOPK classes listed per image (default: 5)" in predict


def test_the_citation_is_the_paper_and_this_version() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == alexnet.__version__
    paper = cff["preferred-citation"]
    assert paper["title"] == "ImageNet Classification with Deep Convolutional Neural Networks"
    assert [a["family-names"] for a in paper["authors"]] == ["Krizhevsky", "Sutskever", "Hinton"]
    assert "MIT" in (ROOT / "LICENSE").read_text() and cff["license"] == "MIT"


def test_the_readme_links_lead_to_files() -> None:
    """The README is read on its own (a repository page, PyPI): each relative link names a file of the checkout."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [x for x in links if not re.match(r"[a-z]+:", x)]
    assert relative, "the README links to its manual"
    missing = [x for x in relative if not (ROOT / x).exists()]
    assert not missing, f"README links to missing files: {missing}"
