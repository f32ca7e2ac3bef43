"""MLflow (the `mlflow` extra): one MLflow run per training run, through MlflowClient, where
MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID point (MLflow's own defaults otherwise).

Params are immutable in MLflow: the config is logged once, when the run starts; where a resume's config
differs (a longer --epochs, a --budget check's train.max_steps), the new value is the tag ``config.KEY``.
MLflow keeps every point a run logs (it has no purge_step): the sender sends each one once (ledger.py)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("alexnet")
# MLflow's HTTP defaults wait 120 s a request and retry 7 times with backoff (minutes on a server gone); the
# sender must notice one within seconds. Set only where the user has not set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # fmt: skip # the run's URL is logged once instead
STATUS = {0: "FINISHED", 1: "FAILED"}  # else 128 + N: stopped by signal N (resumable): KILLED


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``section.key``: value, as the strings MLflow stores."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class MlflowRun:
    name = "mlflow"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id = ""

    def start(self, entry: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
        import mlflow
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (entry or {}).get("tracking_uri") or mlflow.get_tracking_uri()
        self.client = MlflowClient(uri)
        params = flat(config)
        if entry is not None:
            self.run_id, experiment = entry["run_id"], entry["experiment_id"]
            self.client.update_run(self.run_id, "RUNNING")
            self._changed(params)
        else:
            experiment = _experiment(self.client)
            run = self.client.create_run(experiment, run_name=self.run_dir.name,
                                         tags={"alexnet.run_dir": str(self.run_dir.absolute())})  # fmt: skip
            self.run_id = run.info.run_id
            self._log(params=params)
        log.info("mlflow: %s run %s (experiment %s) at %s", "continuing" if entry else "logging to", self.run_id,
                 experiment, uri)  # fmt: skip
        return {"run_id": self.run_id, "experiment_id": experiment, "tracking_uri": uri}

    def delivered(self) -> tuple[int, int]:
        epochs = self.client.get_metric_history(self.run_id, "epoch")
        steps = self.client.get_metric_history(self.run_id, "step/train_loss")
        return int(max((m.value for m in epochs), default=0)), max((m.step for m in steps), default=0)

    def metrics(self, items: list[tuple[dict[str, float], int]]) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        points = [Metric(k, v, now, step) for values, step in items for k, v in values.items()]
        for i in range(0, len(points), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=points[i : i + MAX_METRICS_PER_BATCH])

    def tags(self, tags: dict[str, Any]) -> None:
        self._log(tags={k: str(v) for k, v in tags.items()})

    def files(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p))

    def finish(self, code: int) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(code, "KILLED"))

    def _changed(self, params: dict[str, str]) -> None:
        """A continued run: keys new since it started become params; a value that differs from its param (or
        was a ``config.KEY`` tag before) is that tag."""
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        data = self.client.get_run(self.run_id).data
        logged, tags = data.params, data.tags
        self._log(params={k: v for k, v in params.items() if k not in logged},
                  tags={f"config.{k}": v for k, v in params.items() if k in logged and (
                      logged[k] != v[:MAX_PARAM_VAL_LENGTH] or f"config.{k}" in tags)})  # fmt: skip

    def _log(self, params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """In MLflow's batches, each value cut to the length MLflow takes."""
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        entities: list[Param | RunTag] = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in (params or {}).items()]
        entities += [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in (tags or {}).items()]
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entities[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, params=[e for e in chunk if isinstance(e, Param)],
                                  tags=[e for e in chunk if isinstance(e, RunTag)])  # fmt: skip


def _experiment(client: Any) -> str:
    """MLFLOW_EXPERIMENT_ID, else MLFLOW_EXPERIMENT_NAME (created when new), else MLflow's Default ("0")."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return "0"
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def attach(entry: dict[str, Any], paths: list[Path]) -> None:
    """Add files (report.md) to the run ``entry`` names, outside training."""
    from mlflow import MlflowClient

    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or entry["tracking_uri"])
    for p in paths:
        client.log_artifact(entry["run_id"], str(p))
