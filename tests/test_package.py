"""The package as a user gets it: the sdist and the wheel that `python -m build` makes, checked by twine, and the
wheel installed into a fresh virtual environment and run from there, away from this checkout."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "alexnet"
# files the package reads at run time (importlib.resources): they must come from the wheel, not from a checkout
RUNTIME_DATA = [
    "py.typed",
    "data/imagenet_classes.txt",
    *(f"recipes/{p.name}" for p in (PACKAGE / "recipes").glob("*.yaml")),
]
# the checkout's files the sdist carries besides src/alexnet (MANIFEST.in; tests/ is copied too, to show it is left out)
SDIST_TOP = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff", "MANIFEST.in")
# the built-in digits, as small as a run goes: 3 steps, a 90-image validation split, 67 px crops
TINY_TRAIN = ("train --epochs 1 --batch-size 6 --set train.max_steps=3 --set data.val_fraction=0.05 --set data.resize=72"
              " --set data.crop=67 --set data.workers=0 --set train.amp=none").split()  # fmt: skip


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def _package_files() -> list[str]:
    """Every file of src/alexnet, as a path inside the package (sources and data; no caches)."""
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)  # fmt: skip


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`python -m build` (the sdist, then the wheel built from the sdist) of a copy of the checkout, so that nothing
    is written beside the sources (an egg-info there would be a second `alexnet` to an editable install)."""
    tmp = tmp_path_factory.mktemp("dist")
    copy = tmp / "checkout"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SDIST_TOP:
        shutil.copy(ROOT / name, copy / name)
    # no isolation: the build backend is the test extra's setuptools (no download)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "out"), str(copy)])
    (wheel,), (sdist,) = (tmp / "out").glob("*.whl"), (tmp / "out").glob("*.tar.gz")
    return SimpleNamespace(wheel=wheel, sdist=sdist)


def test_the_sdist_and_the_wheel_pass_twine_and_carry_every_source_and_data_file(dist: SimpleNamespace) -> None:
    import alexnet

    out = _run([sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)])
    assert out.stdout.count("PASSED") == 2, out.stdout
    wheel = zipfile.ZipFile(dist.wheel).namelist()
    assert sorted(n[len("alexnet/") :] for n in wheel if n.startswith("alexnet/")) == _package_files()
    assert {f"alexnet/{f}" for f in RUNTIME_DATA} <= set(wheel)  # the run-time data by name (among them above)
    meta = f"alexnet-{alexnet.__version__}.dist-info"
    entry_points = zipfile.ZipFile(dist.wheel).read(f"{meta}/entry_points.txt").decode()
    assert "alexnet = alexnet.cli:main" in entry_points
    with tarfile.open(dist.sdist) as tar:
        top = f"alexnet-{alexnet.__version__}/"
        files = {m.name[len(top) :] for m in tar.getmembers() if m.isfile() and m.name.startswith(top)}
    made = {f for f in files if f.startswith("src/alexnet.egg-info/") or f in ("PKG-INFO", "setup.cfg")}  # setuptools'
    # the package's files and the top-level files above; nothing of the test suite (it needs the whole repository)
    assert files - made == {*(f"src/alexnet/{f}" for f in _package_files()), *SDIST_TOP}, sorted(files - made)


class _Venv(venv.EnvBuilder):
    def post_setup(self, context: SimpleNamespace) -> None:
        self.context = context


def test_the_wheel_installed_in_a_fresh_venv_runs_from_its_own_files(dist: SimpleNamespace, tmp_path: Path) -> None:
    """A venv without pip or system site packages, the wheel installed into it (no dependencies: the wheel alone),
    then this interpreter's site-packages added after its own by a .pth file, for torch and the rest. A path
    listed in a .pth file is not scanned for .pth files itself, so an editable install of this checkout there
    (its __editable__ .pth file) is not seen; `--system-site-packages` would give the base interpreter's
    site-packages instead, which need not hold torch (not when the test runs from a venv)."""
    builder = _Venv(with_pip=False)
    builder.create(tmp_path / "venv")
    python, scripts = builder.context.env_exe, Path(builder.context.bin_path)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
          "--disable-pip-version-check", "-q", str(dist.wheel)])  # fmt: skip
    paths = json.loads(_run([python, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"]).stdout)
    own = Path(paths["purelib"]).resolve()
    outer = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (own / "_outer_site_packages.pth").write_text("\n".join(p for p in outer if Path(p).resolve() != own) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    work = tmp_path / "work"  # an empty working directory: nothing of this checkout on sys.path
    work.mkdir()

    probe = (
        "import importlib.metadata, importlib.resources, json, alexnet\n"
        "from alexnet.config import list_recipes\n"
        "from alexnet.data.classes import imagenet_classes\n"
        "m = alexnet.create_model('alexnet')\n"
        "print(json.dumps({'file': alexnet.__file__, 'resources': str(importlib.resources.files('alexnet')),\n"
        "  'version': importlib.metadata.version('alexnet'), 'params': sum(p.numel() for p in m.parameters()),\n"
        "  'recipes': list_recipes(), 'classes': imagenet_classes()[:1] + [len(imagenet_classes())]}))\n"
    )
    got = json.loads(_run([python, "-c", probe], cwd=work, env=env).stdout)
    installed = own / "alexnet"
    assert Path(got["file"]).resolve() == installed / "__init__.py" and Path(got["resources"]).resolve() == installed
    assert (installed / "py.typed").is_file()
    import alexnet

    assert got["version"] == alexnet.__version__
    assert got["params"] == 60_965_224  # the 2012 network at 1000 classes (the two-tower, grouped layout)
    assert got["recipes"] == sorted(Path(f).stem for f in RUNTIME_DATA if f.startswith("recipes/"))
    assert got["classes"] == [["n01440764", "tench"], 1000]  # ILSVRC-2012's class 0, and all 1000

    cli = shutil.which("alexnet", path=str(scripts))  # the wheel's console script
    assert cli is not None
    summary = _run([cli, "summary"], cwd=work, env=env).stdout
    assert "60,965,224" in summary.splitlines()[-1]  # the total row
    _run([cli, *TINY_TRAIN, "--out", "run"], cwd=work, env=env)
    run = work / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 3 and rows[0]["val_n"] == 90  # 5 % of the 1,797 digits
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "recipe: digits" in (run / "config.yaml").read_text()
