"""The shape of the code base: one-way imports, functions and modules a reader can hold, and checkpoints of
the previous format still loading."""

from __future__ import annotations

import ast
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"
WINGS = {"commands", "data", "engine", "inference", "io", "models", "parallel", "recipes", "trackers"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every alexnet module ``path`` imports, at module level or inside functions (the lazy imports count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_one_way() -> None:
    """cli -> commands -> the library (engine, inference, io, data, models, parallel, trackers, config) -> errors: no
    cycle, no command imports another, nothing under cli imports it."""
    graph = import_graph()
    assert "alexnet.commands.train" in graph and "alexnet.engine.epoch" in graph
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"
    commands = {m for m in graph if m.startswith("alexnet.commands.")}
    assert {"alexnet.commands.train", "alexnet.commands.evaluate", "alexnet.commands.export"} <= commands
    for module, targets in graph.items():
        if module in commands:
            assert not targets & commands, f"command {module} imports command(s) {targets & commands}"
        elif module not in ("alexnet.cli", "alexnet.__main__"):
            assert not targets & (commands | {"alexnet.cli"}), f"library {module} imports {targets & commands}"
        assert "alexnet.cli" not in targets or module == "alexnet.__main__", module


def test_the_package_shows_its_parts() -> None:
    """A handful of modules at the top of src/alexnet/ (the command line, the config, the errors, the public names
    and two re-exports), the rest in wings; what scripts outside the package import still imports, as the same
    objects."""
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 12, top
    assert {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"} == WINGS
    import alexnet
    from alexnet.cli import main
    from alexnet.engine.tuning import keep_freed_memory as real_keep
    from alexnet.io.weights import load_weights as real_load
    from alexnet.tuning import keep_freed_memory
    from alexnet.weights import load_weights

    assert load_weights is real_load and keep_freed_memory is real_keep and callable(main)
    assert (
        alexnet.create_model("alexnet_owt", 10).classifier[-1].out_features == 10 and "alexnet" in alexnet.list_models()
    )


def test_functions_and_modules_fit_on_a_screen() -> None:
    long_functions, long_modules = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_modules.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long_functions and not long_modules, long_functions + long_modules


V0_1 = json.loads((Path(__file__).parent / "data" / "v0.1.0-checkpoints.json").read_text())


def _made(desc: Any, g: torch.Generator, data: Path, key: str = "") -> Any:
    """A value of the structure 0.1.0 wrote (tests/data/v0.1.0-checkpoints.json): tensors of its dtypes and
    shapes, made here (seeded; weights at the paper's init scale), a valid RNG state where it saved one."""
    if isinstance(desc, list):
        return [_made(v, g, data, key) for v in desc]
    if isinstance(desc, str):
        return desc.replace("DATA", str(data))
    if not isinstance(desc, dict):
        return desc
    if "__tensor__" in desc:
        dtype, shape = getattr(torch, desc["__tensor__"]), desc["shape"]
        if key == ".rng.torch":  # the generator's own state: made by a generator
            state = torch.Generator().manual_seed(1).get_state()
            assert (state.dtype, list(state.shape)) == (dtype, shape)
            return state
        return (
            (torch.randn(shape, generator=g) * 0.01).to(dtype)
            if dtype.is_floating_point
            else torch.zeros(shape, dtype=dtype)
        )
    if "__ints__" in desc:  # Python's Mersenne Twister state
        state = list(random.Random(1).getstate()[1])
        assert len(state) == desc["__ints__"]
        return state
    if "__int_keys__" in desc:
        return {int(k): _made(v, g, data, f"{key}.{k}") for k, v in desc["__int_keys__"].items()}
    return {k: _made(v, g, data, f"{key}.{k}") for k, v in desc.items()}


def _v0_1_run(name: str, root: Path) -> tuple[Path, dict[str, Any], Path]:
    """The run directory 0.1.0 left (checkpoint, metrics.jsonl, stats.npz), its data folder, and the checkpoint."""
    import numpy as np

    from .conftest import make_imagefolder

    rec, data = V0_1["runs"][name], make_imagefolder(root / "data")  # DATA as 0.1.0's run had it
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    ck = _made(rec["contents"], torch.Generator().manual_seed(0), data)
    path = run / rec["checkpoint"]
    torch.save(ck, path)
    if path.name != "last.pt":  # 0.1.0's publish: last.pt is a hard link to the newest step file
        os.link(path, run / "checkpoints" / "last.pt")
    (run / "metrics.jsonl").write_text("".join(row + "\n" for row in rec["metrics.jsonl"]))
    stats = {k: np.asarray(a["values"], dtype=a["dtype"]) if "values" in a else
             np.asarray(ck["preprocess"]["mean_image"], dtype=a["dtype"]) for k, a in rec["stats.npz"].items()}  # fmt: skip
    assert list(stats["mean_image"].shape) == rec["stats.npz"]["mean_image"]["shape"]
    np.savez(run / "stats.npz", **{k: np.char.replace(v, "DATA", str(data)) if v.dtype.kind == "U" else v
                                   for k, v in stats.items()})  # fmt: skip
    return run, ck, path


@pytest.mark.parametrize("name", sorted(V0_1["runs"]))
def test_runs_of_version_0_1_still_load_predict_and_resume(name: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """What 0.1.0's own code wrote (keys, nesting, dtypes, shapes and values of its checkpoints; a mid-epoch
    step checkpoint of the paper's network and an epoch-end one of a --towers cpu,cpu run, whose optimizer
    state is in the tower form) loads with its weights, classes and preprocessing, predicts, and resumes."""
    from alexnet.cli import main
    from alexnet.io import checkpoint as ckpt_io
    from alexnet.io.weights import load_weights

    run, ck, path = _v0_1_run(name, tmp_path)
    w = load_weights(str(path))
    assert w.variant == "alexnet" and w.class_names == ["class_0", "class_1", "class_2"]
    pre = ck["preprocess"]
    assert (w.preprocess.resize, w.preprocess.crop) == (72, 67) and w.preprocess.mean == tuple(pre["mean"])
    assert torch.equal(w.preprocess.mean_image, pre["mean_image"])  # what predict subtracts (normalize: pixel)
    state = w.model.state_dict()
    assert sorted(state) == sorted(ck["model"]) and all(torch.equal(state[k], v) for k, v in ck["model"].items())
    image = str(tmp_path / "data" / "val" / "class_1" / "img_0.png")
    assert main(["predict", str(path), image, "--json", "--topk", "3"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (
        sorted(c["class"] for c in row["top"]) == w.class_names and abs(sum(c["prob"] for c in row["top"]) - 1) < 1e-4
    )
    assert main(["evaluate", str(run), "--json"]) == 0 and json.loads(capsys.readouterr().out)["n"] == 9
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # mid-epoch 2 of 2, or epoch 1 of 1 -> 2
    done = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert (done["epoch"], done["step_in_epoch"], done["global_step"]) == (2, 0, 6)  # 3 steps an epoch
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_one_version_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`alexnet --version`, alexnet.__version__, the metadata a wheel or an editable install of this checkout
    gets (setuptools reads the version from the package: its one home), the installed package's when it was
    installed from this checkout, and CHANGELOG.md's latest release agree."""
    import contextlib
    import importlib.metadata
    import io
    import re
    import shutil

    from setuptools import build_meta

    import alexnet
    from alexnet.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"alexnet {alexnet.__version__}\n"
    copy = tmp_path / "checkout"  # (metadata is built beside the sources: not in the checkout itself)
    shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, copy / name)
    (copy / "out").mkdir()
    monkeypatch.chdir(copy)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        info = build_meta.prepare_metadata_for_build_wheel(str(copy / "out"))
    assert (
        re.search(r"^Version: (\S+)$", (copy / "out" / info / "METADATA").read_text(), re.M)[1] == alexnet.__version__
    )
    installed = importlib.metadata.distribution("alexnet")
    if Path(alexnet.__file__).resolve().is_relative_to(root) and root.as_uri() in (
        installed.read_text("direct_url.json") or ""
    ):
        assert installed.version == alexnet.__version__  # (a venv installed from another checkout says its own)
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", (root / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == alexnet.__version__ and f"[{alexnet.__version__}]: " in (root / "CHANGELOG.md").read_text()
