"""The shape of the code base: one-way imports, functions and modules a reader can hold, and checkpoints of
the previous format still loading."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"
COMMANDS = {"train", "evaluate", "predict", "export", "figures", "report", "summary", "import_weights", "explain"}


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
    graph = import_graph()
    assert "alexnet.train" in graph and "alexnet.engine.epoch" in graph
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"
    commands = {f"alexnet.{c}" for c in COMMANDS}
    for module, targets in graph.items():
        if module in commands:
            assert not targets & commands, f"command {module} imports command(s) {targets & commands}"
        elif module not in ("alexnet.cli", "alexnet.__main__"):
            assert not targets & (commands | {"alexnet.cli"}), f"library {module} imports {targets & commands}"
        assert "alexnet.cli" not in targets or module == "alexnet.__main__", module


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


def _v1_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint dict exactly as version 0.1 wrote it (train.make_checkpoint before the engine split)."""
    from alexnet import create_model
    from alexnet.config import Config
    from alexnet.optim import Schedule

    cfg = Config()
    cfg.model.name, cfg.model.init = "alexnet_owt", "kaiming"
    cfg.data.path, cfg.data.resize, cfg.data.crop = None, 72, 67
    cfg.train.epochs, cfg.train.batch_size, cfg.train.amp, cfg.train.channels_last = 2, 64, "none", False
    cfg.optim.lr = 0.002
    cfg.train.compile, cfg.schedule.name = False, "constant"
    torch.manual_seed(0)
    model = create_model("alexnet_owt", 10, init="kaiming")
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 67, 67)).sum().backward()
    opt.step()
    sched = Schedule(opt, cfg.schedule, 0.002, 2, 23)
    ck = {
        "format": "alexnet-checkpoint/1", "model": model.state_dict(), "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(), "scaler": None, "epoch": 1, "step_in_epoch": 0, "global_step": 10,
        "best": {"val_top1": 0.5, "val_top5": 0.9, "epoch": 1},
        "partial": {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0},
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]}, "config": cfg.to_dict(),
        "variant": "alexnet_owt", "class_names": [str(d) for d in range(10)],
        "preprocess": {"resize": 72, "crop": 67, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                       "mean_image": None, "builtin_digits": True},
        "world_size": 1,
    }  # fmt: skip
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(ck, path)
    return path


def test_checkpoints_of_version_0_1_still_load_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from alexnet.cli import main
    from alexnet.weights import load_weights

    path = _v1_checkpoint(tmp_path)
    w = load_weights(str(path))
    assert w.variant == "alexnet_owt" and w.preprocess.crop == 67 and w.preprocess.mean == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        assert torch.equal(w.model(x), w.model(x)) and w.model(x).shape == (1, 10)
    assert main(["evaluate", str(path), "--json"]) == 0
    assert '"n": 359' in capsys.readouterr().out
    assert main(["train", "--resume", str(path.parents[1]), "--set", "data.workers=0"]) == 0  # epoch 2 of 2
    from alexnet import checkpoint as ckpt_io

    assert ckpt_io.load(path.parent / "last.pt")["epoch"] == 2
