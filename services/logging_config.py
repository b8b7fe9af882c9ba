"""The run config's `logging:` section: which experiment trackers a run reports to, what may leave the
machine, and the readable samples of completions kept in the run directory (README, "Tracking").

Its own module so that services/config.py stays readable in one sitting; RunConfig composes it like the
packages' sections. What each tracker receives: services/training/trackers.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TrackerName = Literal["tensorboard", "mlflow", "wandb"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MlflowConfig(_Strict):
    """Where an MLflow run lives. Credentials are MLflow's own environment variables
    (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), never YAML."""

    tracking_uri: str | None = Field(
        None, description="A tracking server (http://host:5000) or a local store (sqlite:///path.db; a "
        "file:/dir store only with MLFLOW_ALLOW_FILE_STORE=true, MLflow 3 refuses it otherwise). None: "
        "MLFLOW_TRACKING_URI from the environment, else sqlite:///<output_dir>/mlflow.db.")
    experiment: str = Field(
        "medground", min_length=1, description="Experiment the run is filed under (created when missing); "
        "the MLflow run is named after the run directory.")
    register_model: str | None = Field(
        None, min_length=1, description="A registered model name: every model artefact the run logs (the "
        "final adapter with logging.log_adapter, the merged export with logging.log_merged) becomes a new "
        "version of it. None: artefacts are logged, not registered.")


class WandbConfig(_Strict):
    """Where a W&B run lives. The API key and the mode come from W&B's environment (WANDB_API_KEY;
    WANDB_MODE=offline writes the run under RUN_DIR/wandb/ with no network, `wandb sync` uploads it later)."""

    project: str = Field("medground", min_length=1,
                         description="W&B project; the run is named after the run directory.")
    entity: str | None = Field(None, description="W&B team or user (None: the API key's default entity).")


class LoggingConfig(_Strict):
    """Experiment trackers and what they may receive. The run directory keeps every file whatever is set here
    (metrics.jsonl, eval/, samples/); these switches govern only what is sent to a tracker."""

    trackers: tuple[TrackerName, ...] = Field(
        ("tensorboard",), description="Where the metric rows go besides metrics.jsonl: tensorboard (files "
        "in RUN_DIR/tensorboard), mlflow, wandb (extras `medground[mlflow]`, `medground[wandb]`); each at "
        "most once.")
    log_images: bool = Field(
        False, description="Send image files (evaluation overlays: patient pixels with boxes drawn on them) "
        "to mlflow/wandb. Off by default: a medical image must not leave the site unless the operator "
        "decides so.")
    log_completions: bool = Field(
        False, description="Send text files (samples/train-step-N.jsonl, eval/step-N.jsonl: completions, "
        "thinks, phrases, knowledge, record ids) to mlflow/wandb. Off by default: report text is patient "
        "data.")
    log_adapter: bool = Field(
        False, description="Send the final adapter (RUN_DIR/adapter) as a model artefact when the run ends.")
    log_merged: bool = Field(
        False, description="Send the merged model `medground export --merged` writes as a model artefact "
        "(large: the whole base model).")
    samples_every: int = Field(
        10, ge=0, description="Every K GRPO steps, write samples/train-step-K.jsonl into the run directory: "
        "each completion of a few groups with its text, parsed box, reward per term, advantage, the tau it "
        "was scored under and the adapter version that sampled it (0: never).")
    samples_groups: int = Field(
        2, ge=1, description="Groups per samples file (the learner's kept groups first).")
    on_tracker_error: Literal["stop", "warn"] = Field(
        "stop", description="A tracker unreachable when the run starts: stop with one line naming it, or "
        "warn and train without it. A tracker failing mid-run never stops training: each step's row stays in "
        "metrics.jsonl, the failure is counted (tracker/failures) and the delivery retried.")
    mlflow: MlflowConfig = MlflowConfig()
    wandb: WandbConfig = WandbConfig()

    @field_validator("trackers")
    @classmethod
    def _each_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} names a tracker twice; list each once, "
                             "e.g. [tensorboard, mlflow]")
        return value
