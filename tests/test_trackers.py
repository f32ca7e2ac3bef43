"""Experiment trackers against the real things: a `mlflow server` started here on 127.0.0.1 (sqlite store and
artifacts in a temporary directory), read back through MLflow's client; W&B in offline mode, read back from
the files it writes. Nothing leaves the machine (MLflow's telemetry and W&B's error reports are off, W&B is
offline, MLflow's tracking URI is the local server's)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from alexnet.cli import main
from alexnet.config import apply_overrides, load_recipe

from .conftest import FAST

# 3 classes x 6 images, batch 4: 5 steps an epoch, a log line after each
RUN_ARGS = [*FAST, "--batch-size", "4", "--set", "optim.lr=0.0003"]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "WANDB_SILENT": "true",
         "WANDB_ERROR_REPORTING": "false"}  # fmt: skip
GONE = "mlflow stopped receiving this run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    """One real server for the module (its start is the slow part: 17-34 s on a shared 2-core AVX-512 BF16/AMX
    Xeon, mlflow 3.17.2); the module's last test kills it."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    url = f"http://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    with open(root / "server.log", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **QUIET),
                                start_new_session=True)  # fmt: skip
    try:
        t0 = time.monotonic()
        while not _answers(url):
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "mlflow server did not answer within 300 s"
            time.sleep(0.5)
        yield url, proc
    finally:
        _stop(proc, signal.SIGTERM)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """The server and its worker processes (its own process group)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def tracked(mlflow_server: tuple[str, subprocess.Popen], monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> tuple[Any, str, dict[str, str]]:  # fmt: skip
    """A client, this test's own experiment, and the environment that points training at them."""
    from mlflow import MlflowClient

    env = {**QUIET, "MLFLOW_TRACKING_URI": mlflow_server[0], "MLFLOW_EXPERIMENT_NAME": request.node.name}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return MlflowClient(mlflow_server[0]), request.node.name, env


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env))  # fmt: skip


def _wait_for(ready: Any, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < timeout
        time.sleep(0.05)


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _only_run(client: Any, experiment: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _assert_each_row_once(client: Any, run_id: str, run: Path) -> None:
    """Every epoch row of metrics.jsonl, at its step, once; each log line's step at most once."""
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [5, 10]
    for key in ("val_top1", "train_loss", "lr"):  # (an epoch trained again after a resume: its sums, not bits)
        assert _history(client, run_id, key) == [(r["step"], pytest.approx(r[key], rel=1e-5)) for r in rows], key
    assert [v for _, v in _history(client, run_id, "epoch")] == [1, 2]
    steps = [s for s, _ in _history(client, run_id, "step/train_loss")]
    assert len(steps) == len(set(steps)) and set(range(9, 11)) <= set(steps) <= set(range(1, 11))


def _artifact(client: Any, run_id: str, name: str, into: Path) -> str:
    return Path(client.download_artifacts(run_id, name, str(into))).read_text()


def test_report_to_names_trackers_and_refuses_one_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import alexnet.commands.train

    got: list[list[str]] = []
    monkeypatch.setattr(alexnet.commands.train, "run_train", lambda *a: got.append(a[4]) or 0)
    assert main(["train", "--report-to", "none"]) == 0 and main(["train", "--report-to", "mlflow, wandb"]) == 0
    assert [apply_overrides(load_recipe("digits"), o).train.report_to for o in got] == [[], ["mlflow", "wandb"]]
    assert load_recipe("digits").train.report_to == ["tensorboard"]  # the default, as before trackers
    monkeypatch.undo()
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--report-to", "mlflow,comet"]) == 2
    err = capsys.readouterr().err
    assert "train.report_to" in err and "tensorboard, mlflow, wandb" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what importlib sees where mlflow is not installed
    assert main(["train", "--out", str(run), "--report-to", "mlflow"]) == 2
    err = capsys.readouterr().err
    tomllib = pytest.importorskip("tomllib")  # the extra as pyproject.toml lists it (PyPI has no `alexnet[mlflow]`)
    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"pip install '{extra['mlflow'][0]}'" in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()  # refused before any work


def test_mlflow_holds_one_run_and_each_row_once_through_a_stop_and_resumes(tiny_folder: Path, tmp_path: Path,
                                                                           tracked: Any) -> None:  # fmt: skip
    client, experiment, env = tracked
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *RUN_ARGS, "--epochs", "2", "--set",
            "train.checkpoint_every=4", "--report-to", "mlflow,tensorboard"]  # fmt: skip
    proc = _spawn(args, env)
    _wait_for(lambda: (run / "metrics.jsonl").is_file(), proc)  # epoch 1 ended
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 143
    stopped = _only_run(client, experiment)
    run_id = stopped.info.run_id
    assert stopped.info.status == "KILLED" and len(_rows(run)) == 1  # stopped, resumable; its files sent
    assert _artifact(client, run_id, "metrics.jsonl", tmp_path / "a") == (run / "metrics.jsonl").read_text()
    params = stopped.data.params
    assert params["train.epochs"] == "2" and params["model.name"] == "alexnet" and params["data.crop"] == "67"
    assert params["train.report_to"] == "['mlflow', 'tensorboard']"
    ledger = json.loads((run / "trackers.json").read_text())
    assert ledger["mlflow"]["run_id"] == run_id
    # as a kill between MLflow's answer and the ledger's write leaves it: MLflow's own history says what it has
    ledger["mlflow"] |= {"sent_epoch": 0, "sent_step": 0}
    (run / "trackers.json").write_text(json.dumps(ledger))
    assert main(["train", "--resume", str(run)]) == 0  # no --report-to: the run's own trackers, its MLflow run
    first = _only_run(client, experiment)
    assert first.info.run_id == run_id and first.info.status == "FINISHED"
    _assert_each_row_once(client, run_id, run)
    assert _artifact(client, run_id, "metrics.jsonl", tmp_path / "b") == (run / "metrics.jsonl").read_text()
    assert yaml.safe_load(_artifact(client, run_id, "config.yaml", tmp_path / "c"))["train"]["epochs"] == 2
    # killed after epoch 2's row reached MLflow, before its checkpoints were written: the resume trains steps
    # 9-10 and epoch 2's end again (from step-00000008.pt), and MLflow holds each once still
    for name in ("last.pt", "best.pt", "step-00000010.pt"):
        (run / "checkpoints" / name).unlink()
    assert main(["train", "--resume", str(run), "--set", "train.keep_last=4"]) == 0
    again = _only_run(client, experiment)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    _assert_each_row_once(client, run_id, run)
    assert again.data.params["train.keep_last"] == "3" and again.data.tags["config.train.keep_last"] == "4"
    assert main(["report", str(run), "--no-data-figures"]) == 0  # report.md joins the same MLflow run
    assert _artifact(client, run_id, "report.md", tmp_path / "d") == (run / "report.md").read_text()


def test_a_budget_run_sends_its_plan(tiny_folder: Path, tmp_path: Path, tracked: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import alexnet.commands.train as train_mod

    real_plan_run = train_mod.plan_run
    # planned as if 100 s of a 60 s budget had gone: the check after epoch 1 ends the run there
    monkeypatch.setattr(train_mod, "plan_run", lambda s, st, t: replace(real_plan_run(s, st, t), started=t - 100.0))
    client, experiment, _ = tracked
    run = tmp_path / "budget"
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *RUN_ARGS, "--epochs", "4", "--budget", "60s"]
    assert main([*args, "--report-to", "mlflow"]) == 0
    plan, found = json.loads((run / "plan.json").read_text()), _only_run(client, experiment)
    assert found.data.params["train.budget"] == "60s" and len(plan["checks"]) == 1
    assert found.data.params["train.max_steps"] == str(plan["checks"][0]["planned_steps"])  # the first plan's
    assert found.data.tags["plan.max_steps"] == str(plan["max_steps"]) == "5"  # the check's
    assert found.data.tags["plan.checks"] == "1" and found.data.tags["plan.budget_s"] == "60.0"
    assert json.loads(_artifact(client, found.info.run_id, "plan.json", tmp_path / "a")) == plan
    assert not (run / "tensorboard").exists()  # only the trackers named


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (run-ID.wandb): LevelDB's log format, 32 KiB blocks of chunks,
    each a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last), after W&B's 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _offline_run(wandb_dir: Path) -> dict[str, Any]:
    """What one offline directory holds: run id, config, history rows by step, the summary, files saved."""
    (log_file,) = wandb_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "history": {}, "summary": {}, "files": set()}
    for r in _wandb_records(log_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["id"] = r.run.run_id
            out["config"] |= {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "config":
            out["config"] |= {u.key: json.loads(u.value_json) for u in r.config.update}
        elif kind == "history":  # (a row committed by the run's end has no step.num: its _step says)
            row = {(i.key or i.nested_key[0]): json.loads(i.value_json) for i in r.history.item}
            out["history"][row["_step"]] = row
        elif kind == "summary":
            out["summary"] |= {(u.key or u.nested_key[0]): json.loads(u.value_json) for u in r.summary.update}
        elif kind == "files":
            out["files"] |= {f.path for f in r.files.files}
    return out


def test_wandb_offline_gets_the_rows_it_missed_and_a_resume_adds_a_piece(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wandb = pytest.importorskip("wandb")
    for k, v in {**QUIET, "WANDB_MODE": "offline"}.items():
        monkeypatch.setenv(k, v)
    for k in ("WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(k, raising=False)
    run = tmp_path / "wb"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *RUN_ARGS]) == 0  # tensorboard only
    assert main(["train", "--resume", str(run), "--epochs", "2", "--report-to", "wandb"]) == 0
    wandb.teardown()  # what a process's exit does: W&B's service writes the rest of its files (its run's end)
    (first,) = [_offline_run(d) for d in (run / "wandb").glob("offline-run-*")]
    rows = _rows(run)
    assert first["id"] == json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    assert first["config"]["model"]["name"] == "alexnet" and first["config"]["train"]["report_to"] == ["wandb"]
    # epoch 1's row, trained before W&B was asked for, from metrics.jsonl; then epoch 2's log lines and row
    assert sorted(first["history"]) == [5, 6, 7, 8, 9, 10] and "step/train_loss" not in first["history"][5]
    assert [first["history"][r["step"]]["val_top1"] for r in rows] == [r["val_top1"] for r in rows]
    assert first["summary"]["val_top1"] == rows[1]["val_top1"] and first["summary"]["epoch"] == 2
    assert {"wb/config.yaml", "wb/metrics.jsonl"} <= first["files"]
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    wandb.teardown()
    pieces = sorted((run / "wandb").glob("offline-run-*"))  # offline-run-DATE_TIME-ID
    second = _offline_run(pieces[1])
    assert len(pieces) == 2 and second["id"] == first["id"] and second["config"]["train"]["epochs"] == 3
    assert sorted(second["history"]) == [11, 12, 13, 14, 15]  # only what the first piece lacks
    assert second["history"][15]["val_top1"] == _rows(run)[2]["val_top1"]
    assert f"wandb sync --id {first['id']}" in caplog.text and "cannot resume an offline run" in caplog.text


def test_a_server_gone_mid_run_is_said_once_and_training_goes_on(tiny_folder: Path, tmp_path: Path, tracked: Any,
                                                                 mlflow_server: Any) -> None:  # fmt: skip
    """The module's last test: it kills the server."""
    _, _, env = tracked
    run = tmp_path / "gone"
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *RUN_ARGS, "--report-to", "mlflow"]  # 1 epoch
    proc = _spawn(args, env)
    ledger = run / "trackers.json"  # the server has the first log line: 4 more to go, the epoch's row, the files
    _wait_for(lambda: ledger.is_file() and json.loads(ledger.read_text()).get("mlflow", {}).get("sent_step"), proc)
    _stop(mlflow_server[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)  # a hang would end here, not in a timed assertion
    assert proc.returncode == 0, err[-3000:]
    assert err.count(GONE) == 1 and "Traceback" not in err, err[-3000:]
    assert [r["epoch"] for r in _rows(run)] == [1] and (run / "checkpoints" / "last.pt").is_file()  # all there
