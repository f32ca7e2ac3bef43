"""The Hugging Face Hub as a weights source, offline: a run exported with `--format hub`, its folder laid into a
cache exactly as huggingface_hub lays one out (models--ORG--NAME/snapshots/REV/..., refs/main), then read as
hf-hub:ORG/NAME with HF_HUB_OFFLINE=1. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alexnet.cli import main

from .conftest import FAST, make_imagefolder

pytest.importorskip("huggingface_hub")
REPO = Path(__file__).resolve().parents[1]
REV = "5c0a4e1d0b7f6e2a9c3d8b1f4e6a7c2d9b0e1f3a"  # a commit hash, as the Hub's are


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("hub")
    data = make_imagefolder(d / "data")
    run = d / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST]) == 0
    folder = d / "tiny"
    assert main(["export", str(run), "--format", "hub", "--out", str(folder)]) == 0
    repo = d / "cache" / "models--me--tiny"
    shutil.copytree(folder, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(d / "cache"), PYTHONPATH=str(REPO / "src"))
    image = next((data / "val" / "class_1").iterdir())
    yield {"dir": d, "data": data, "run": run, "folder": folder, "env": env, "image": image}
    shutil.rmtree(d, ignore_errors=True)  # its checkpoints: RAM the next files need (tests/conftest.py)


def _run(hub: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=hub["env"], timeout=300,
                          cwd=hub["dir"])  # fmt: skip


def test_hf_hub_weights_read_offline_from_the_cache(hub: dict, capsys: pytest.CaptureFixture) -> None:
    """`alexnet predict hf-hub:me/tiny IMG` with HF_HUB_OFFLINE=1 prints what `predict` on the file prints; a
    revision names a snapshot; a repository the cache lacks is one line, as is a malformed name. (One process
    with the environment set, the commands called as `alexnet` would call them.)"""
    capsys.readouterr()
    assert main(["predict", str(hub["folder"] / "model.safetensors"), str(hub["image"])]) == 0
    want = capsys.readouterr().out
    names = ["hf-hub:me/tiny", f"hf-hub:me/tiny@{REV}", "hf-hub:me/other", "hf-hub:me/tiny@v9", "hf-hub:tiny"]
    code = f"""
import contextlib, io, json
from alexnet.cli import main
said = []
for name in {names!r}:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", name, {str(hub["image"])!r}])
    said.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(said))
"""
    res = _run(hub, "-c", code)
    assert res.returncode == 0, res.stderr[-2000:]
    said = dict(zip(names, json.loads(res.stdout.splitlines()[-1])))
    for name in names[:2]:
        assert said[name] == [0, want, ""], said[name]
    for name, words in (("hf-hub:me/other", "model.safetensors is not in the Hugging Face cache"),
                        ("hf-hub:me/tiny@v9", "is not in the Hugging Face cache"),
                        ("hf-hub:tiny", "a Hub weights name is hf-hub:ORG/NAME")):  # fmt: skip
        code, _, err = said[name]
        assert code == 2 and err.count("\n") == 1 and words in err, err


def test_create_model_torch_hub_and_train_take_hub_weights(hub: dict) -> None:
    """create_model(..., weights="hf-hub:..."), torch.hub.load(..., weights="hf-hub:...") and `train --weights
    hf-hub:...` get the repository's weights from the cache, offline."""
    new_run = hub["dir"] / "from-hub"
    code = f"""
import json, sys, torch
import alexnet
from alexnet.cli import main
from alexnet.io.weights import load_weights
ref = load_weights({str(hub["folder"] / "model.safetensors")!r}).model
x = torch.randn(2, 3, 67, 67)
m = alexnet.create_model("alexnet", weights="hf-hub:me/tiny").eval()
h = torch.hub.load({str(REPO)!r}, "alexnet", source="local", weights="hf-hub:me/tiny")
five = alexnet.create_model("alexnet", 5, weights="hf-hub:me/tiny")
with torch.no_grad():
    assert torch.equal(m(x), ref(x)) and torch.equal(h(x), ref(x)), "hub weights differ"
assert h.class_names == ["class_0", "class_1", "class_2"] and five.classifier.fc8.out_features == 5
assert torch.equal(five.classifier.fc6.weight, ref.classifier.fc6.weight)
try:
    alexnet.create_model("alexnet_owt", weights="hf-hub:me/tiny")
except ValueError as e:
    assert "holds alexnet weights" in str(e)
else:
    raise AssertionError("alexnet_owt built from alexnet weights")
sys.exit(main(["train", "--data", {str(hub["data"])!r}, "--out", {str(new_run)!r}, *{FAST!r},
               "--weights", "hf-hub:me/tiny", "--lr", "1e-12"]))
"""
    res = _run(hub, "-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    from alexnet.io import checkpoint as ckpt_io
    from alexnet.io.weights import load_weights

    ck = ckpt_io.load(new_run / "checkpoints" / "last.pt")
    assert Path(ck["config"]["model"]["weights"]).parts[-3:] == ("models--me--tiny", "snapshots", REV)
    start = load_weights(str(hub["folder"] / "model.safetensors")).model.state_dict()
    for k in ("features.conv1.weight", "classifier.fc6.weight"):
        assert (ck["model"][k] - start[k]).abs().max() < 1e-6, k


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_hub_folder_holds_weights_config_and_a_card(hub: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """model.safetensors, config.json (the export metadata) and README.md, whose YAML block the Hub reads:
    library, license, datasets, tags and the results in model-index form, from the run's best validated epoch
    or from an `evaluate --json` file; never written into a folder that holds files, unless --force."""
    folder, run = hub["folder"], hub["run"]
    meta = _front_matter((folder / "README.md").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in rows if "val_top1" in r), key=lambda r: r["val_top1"])
    assert (meta["library_name"], meta["license"], meta["pipeline_tag"]) == (
        "alexnet",
        "unknown",
        "image-classification",
    )
    assert {"alexnet", "image-classification"} <= set(meta["tags"]) and meta["datasets"] == ["data"]
    result = meta["model-index"][0]["results"][0]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": round(100 * best["val_top1"], 2), "top_5_accuracy": round(100 * best["val_top5"], 2)}
    card = (folder / "README.md").read_text()
    assert f"alexnet train --recipe paper --data {hub['data']}" in card and "--set data.crop=67" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["alexnet_format"] == "alexnet-export/1" and config["weights"] == "model.safetensors"
    assert config["class_names"] == ["class_0", "class_1", "class_2"]
    # the card's results from `evaluate --json`, the license given; a folder with files is not written over
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--tta", "flip"]) == 0
    (tmp_path / "eval.json").write_text(capsys.readouterr().out)
    ev = json.loads((tmp_path / "eval.json").read_text())
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    args = ["export", str(run), "--format", "hub", "--out", str(out), "--results", str(tmp_path / "eval.json"),
            "--license", "mit"]  # fmt: skip
    assert main(args) == 2 and "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main([*args, "--force"]) == 0
    said = capsys.readouterr().out
    assert f"hf upload ORG/NAME {out}" in said and "huggingface-cli" in said
    meta = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "mit"
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"accuracy": round(100 * ev["top1"], 2), "top_5_accuracy": round(100 * ev["top5"], 2)}
    assert "tta flip" in (out / "README.md").read_text()
    for bad, words in ((["--results", str(tmp_path / "eval.json")], "apply to --format hub only"),
                       (["--with-preprocess"], "applies to --format onnx and pt2")):  # fmt: skip
        assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors"), *bad]) == 2
        assert words in capsys.readouterr().err
    # a disk that fills during the weights: the new folder goes; the one given with --force keeps its own files
    from .conftest import fill_the_disk

    with monkeypatch.context() as m:
        fill_the_disk(m, after=100_000)
        assert main(["export", str(run), "--format", "hub", "--out", str(tmp_path / "new")]) == 2
        assert not (tmp_path / "new").exists()
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        assert main([*args, "--force"]) == 2
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert capsys.readouterr().err.strip().endswith("No space left on device")


def test_without_huggingface_hub_one_line_says_what_to_install(hub: dict, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails, as where it is not installed
    assert main(["predict", "hf-hub:me/tiny", str(hub["image"])]) == 2
    err = capsys.readouterr().err
    tomllib = pytest.importorskip("tomllib")  # the extra as pyproject.toml lists it (PyPI has no `alexnet[hub]`)
    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert err.count("\n") == 1 and f"the hub extra: pip install '{extra['hub'][0]}'" in err, err


def test_an_unreachable_hub_is_one_line_not_its_retries(hub: dict, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """huggingface_hub logs two warnings per retry when the Hub cannot be reached (six retries offline, before
    the answer); the one line that says so is all the user sees."""
    import huggingface_hub
    from huggingface_hub import errors

    def unreachable(*args, **kw):
        import logging

        http = logging.getLogger("huggingface_hub.utils._http")  # where its backoff logs
        for retry in range(1, 6):
            http.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co")
            http.warning("Retrying in 1s [Retry %d/5].", retry)
        raise errors.LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    assert main(["predict", "hf-hub:nobody/nothing", str(hub["image"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not in the Hugging Face cache" in err, err
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
