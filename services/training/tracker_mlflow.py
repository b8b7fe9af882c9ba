"""MLflow as a run's tracker (logging.trackers: [mlflow]): a tracking server a lab runs (`mlflow server`), or
a local store (sqlite:; a file: store needs MLFLOW_ALLOW_FILE_STORE=true, MLflow 3 refuses it otherwise).
One MLflow run per run directory, named after it; the resolved config as params; each numeric metric at its
step; files as artifacts; model directories registered as versions of `logging.mlflow.register_model` when
it names one. Imported only when a config names mlflow.

MLflow metric names allow letters, digits and `_ - . : / space` only, so `@` is written `_at_` and `%`
`pct` (`eval/A@0.5` is `eval/A_at_0.5`, `eval/2-10%/mIoU` is `eval/2-10pct/mIoU`), anything else `_`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.training.trackers import Status, TrackerRejected, TrackerUnreachable, flatten, one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from services.config import RunConfig

_NOT_ALLOWED = re.compile(r"[^\w\-. :/]")
PARAMS_PER_CALL = 100  # MLflow's log_batch limits: 100 params, 1000 metrics per request
METRICS_PER_CALL = 1000
PARAM_CHARS = 6000  # MLflow's longest param value; a longer one is cut (the file has it whole)
# MLflow's answers that no retry changes (a name or value it refuses, a deleted or finished run).
REFUSALS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "RESOURCE_DOES_NOT_EXIST"}
# The client retries a failed request 7 times with backoff factor 2 by default (minutes per call while a
# server is down); a training step should lose seconds, not minutes. MLflow's own variables override these.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def mlflow_key(key: str) -> str:
    """A metric or param name MLflow accepts (see the module docstring)."""
    return _NOT_ALLOWED.sub("_", key.replace("@", "_at_").replace("%", "pct"))


def tracking_uri(cfg: RunConfig) -> str:
    """logging.mlflow.tracking_uri, else MLFLOW_TRACKING_URI, else a sqlite store beside the runs."""
    return (cfg.logging.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}")


class MlflowTracker:
    """One MLflow run (services/training/trackers.py: Tracker)."""

    name, remote = "mlflow", True

    def __init__(self, client: MlflowClient, run_id: str, uri: str, artifact_uri: str,
                 register: str | None, label: str) -> None:
        self.client, self.run_id, self.where = client, run_id, uri
        self.artifact_uri, self.register, self.label = artifact_uri, register, label

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: Path, saved: dict[str, Any] | None, attach: bool) -> MlflowTracker:
        """Continue the run kept in trackers.json (same URI), else create one with the config as params."""
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        uri = tracking_uri(cfg)
        client = MlflowClient(uri)
        try:
            if saved and saved.get("tracking_uri") == uri:
                run = client.get_run(saved["run_id"])
                if not attach:
                    client.update_run(run.info.run_id, status="RUNNING")
            else:
                run = _create(client, cfg, run_dir)
        except Exception as exc:  # connection refused, DNS, auth, a store that cannot be opened: one line
            raise TrackerUnreachable(
                f"MLflow at {uri} cannot be reached ({one_line(exc)}); start it or fix "
                "logging.mlflow.tracking_uri (or MLFLOW_TRACKING_URI), or set logging.on_tracker_error=warn "
                "to train without it") from None
        return cls(client, run.info.run_id, uri, run.info.artifact_uri, cfg.logging.mlflow.register_model,
                   run_dir.name)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, step) for k, v in values.items()]
        with _refusals():
            for i in range(0, len(batch), METRICS_PER_CALL):
                self.client.log_batch(self.run_id, metrics=batch[i:i + METRICS_PER_CALL], synchronous=True)

    def artifact(self, path: Path, folder: str) -> None:
        with _refusals():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), folder or None)
            else:
                self.client.log_artifact(self.run_id, str(path), folder or None)

    def model(self, path: Path, folder: str) -> None:
        """The directory as artifacts, then (register_model) a new version of the registered model."""
        self.artifact(path, folder)
        if self.register is None:
            return
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.register)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(self.register)
        self.client.create_model_version(self.register, source=f"{self.artifact_uri}/{folder}",
                                         run_id=self.run_id,
                                         description=f"{folder} of medground run {self.label}")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.where}

    def close(self, status: Status | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, status)


@contextmanager
def _refusals() -> Iterator[None]:
    """MLflow's refusals as TrackerRejected (dropped, not retried); anything else propagates (retried)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in REFUSALS:
            raise TrackerRejected(f"{exc.error_code}: {one_line(exc)}") from exc
        raise


def _create(client: MlflowClient, cfg: RunConfig, run_dir: Path) -> Any:
    """A new MLflow run named after the run directory, in logging.mlflow.experiment, with every config
    field as a param."""
    from mlflow.entities import Param

    name = cfg.logging.mlflow.experiment
    experiment = client.get_experiment_by_name(name)
    # A database store without a server would put artifacts in ./mlruns of whatever directory the driver
    # runs in; keep them beside the runs instead (a server and a file: store choose their own place).
    local = None if client.tracking_uri.startswith(("http:", "https:", "file:", "databricks")) else \
        (Path(cfg.output_dir).resolve() / "mlartifacts").as_uri()
    experiment_id = experiment.experiment_id if experiment is not None else \
        client.create_experiment(name, artifact_location=local)
    run = client.create_run(experiment_id, run_name=run_dir.name,
                            tags={"medground.run_dir": str(run_dir.resolve())})
    params = [Param(mlflow_key(k), v[:PARAM_CHARS]) for k, v in flatten(cfg.model_dump(mode="json")).items()]
    for i in range(0, len(params), PARAMS_PER_CALL):
        client.log_batch(run.info.run_id, params=params[i:i + PARAMS_PER_CALL], synchronous=True)
    return run
