"""Experiment trackers: TensorBoard, MLflow and W&B behind one small Protocol, fed by the run's MetricsWriter
(services/training/metrics.py), which stays the one place that writes a metric row (README, "Tracking").

    MetricsWriter.log(row) -> metrics.jsonl (fsynced first: the run's own record)
                           -> Trackers: a queue per tracker -> TensorBoard | MLflow | W&B

What a tracker receives: every numeric key of each metrics.jsonl row at its step; the resolved config (as
params / the W&B config, and the file); plots; evaluation reports. Only when the operator turns them on
(LoggingConfig): text files (`log_completions`: completions, thinks, phrases, knowledge), image files
(`log_images`: evaluation overlays), the final adapter (`log_adapter`), the merged export (`log_merged`).

Failures: a tracker that cannot be reached when the run starts stops it with one line naming it
(`logging.on_tracker_error: warn` trains without it); one that fails later never stops training: its items
wait in its queue, retried at every row in order, one warning per outage, and the next row counts the
failed deliveries (`tracker/failures`) and what waits (`tracker/pending`); an item a tracker refuses for good
(TrackerRejected: a name it does not accept, a deleted run) is dropped and counted instead, so it never holds
up the rows behind it. `trackers.json` in the run
directory keeps each tracker's run id and the last step it holds, so `--resume` continues the same tracker
run, sends the rows it missed and never a step twice. mlflow and wandb are imported by their own modules
(tracker_mlflow.py, tracker_wandb.py), only when a config names them.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from learner import durable
from services.logging_config import LoggingConfig

if TYPE_CHECKING:
    from services.config import RunConfig

log = logging.getLogger(__name__)

Status = Literal["FINISHED", "FAILED", "KILLED"]  # how a run ended, in MLflow's words
# What a file is, which decides whether it may leave the machine (LoggingConfig's switch for it, or always).
Kind = Literal["config", "plots", "report", "completions", "images", "adapter", "merged"]
MODELS = ("adapter", "merged")  # kinds sent as model artefacts (MLflow registers them when asked)
STATE_FILE = "trackers.json"


class TrackerUnreachable(RuntimeError):
    """A tracker named by logging.trackers could not be started or reached; the message is one line naming
    it (URI or project) and the fix."""


class TrackerRejected(RuntimeError):
    """A tracker refused one item for good (a name or value it does not accept, a deleted run): retrying
    cannot help, so the item is dropped (it stays in the run directory) and counted."""


class Tracker(Protocol):
    """One backend. `remote`: it sends data off the machine (the privacy switches apply, failures count)."""

    name: str
    where: str  # the URI, project or folder, for messages
    remote: bool

    def metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def artifact(self, path: Path, folder: str) -> None:
        """Send a file or a directory under `folder` ('' for the top)."""
        ...

    def model(self, path: Path, folder: str) -> None:
        """Send a model directory (an adapter, a merged model) under `folder`."""
        ...

    def state(self) -> dict[str, Any]:
        """What continues this tracker's run after a restart (its run id), kept in trackers.json."""
        ...

    def close(self, status: Status | None) -> None:
        """End the tracker's run with `status`; None leaves the run's status as it was (`medground eval`)."""
        ...


class TensorBoardTracker:
    """Scalars as TensorBoard events in RUN_DIR/tensorboard (files the run directory keeps anyway)."""

    name, remote = "tensorboard", False

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.where = str(log_dir)
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def artifact(self, path: Path, folder: str) -> None:
        """TensorBoard holds scalars only; the file stays in the run directory."""

    def model(self, path: Path, folder: str) -> None:
        """TensorBoard holds scalars only."""

    def state(self) -> dict[str, Any]:
        return {}

    def close(self, status: Status | None) -> None:
        self._writer.close()


# -------------------------------------------------------------------------------------------------------
# Delivery: a queue per tracker, in order, retried.


@dataclass
class _Link:
    """A tracker and what waits for it: ("metrics", step, values) or (kind, path, folder) items, in order."""

    tracker: Tracker
    queue: deque[tuple[str, Any, Any]] = field(default_factory=deque)
    queued_step: int = -1  # the highest step queued or delivered: a step at or below it is never sent again
    delivered_step: int = -1
    failing: bool = False
    refused: bool = False


class Trackers:
    """The run's trackers behind one call per kind of thing (what MetricsWriter and the driver use)."""

    def __init__(self, trackers: Sequence[Tracker], policy: LoggingConfig | None = None,
                 run_dir: Path | None = None, delivered: Mapping[str, int] | None = None) -> None:
        self.policy = policy or LoggingConfig()
        self.run_dir = run_dir
        self.links = [_Link(t) for t in trackers]
        for link in self.links:
            link.queued_step = link.delivered_step = (delivered or {}).get(link.tracker.name, -1)
        self.failures = 0  # failed deliveries since the last row took the count

    @property
    def remote(self) -> bool:
        return any(link.tracker.remote for link in self.links)

    def counts(self) -> dict[str, int]:
        """`tracker/failures` (deliveries that failed since the last row; each is retried) and
        `tracker/pending` (items waiting), for the row about to be written; {} without a remote tracker."""
        if not self.remote:
            return {}
        out = {"tracker/failures": self.failures, "tracker/pending": sum(len(k.queue) for k in self.links)}
        self.failures = 0
        return out

    def row(self, step: int, values: Mapping[str, float], again: bool = False) -> None:
        """Queue a metric row for each tracker that does not hold this step yet (`again`: for each, e.g. new
        keys at a step the run logged already), then deliver."""
        for link in self.links:
            if again or step > link.queued_step:
                link.queue.append(("metrics", step, dict(values)))
                link.queued_step = max(link.queued_step, step)
        self.flush()

    def backfill(self, rows: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """On resume: queue the run's rows a tracker never received (it was down, or the run died first)."""
        for step, values in rows:
            for link in self.links:
                if step > link.queued_step:
                    link.queue.append(("metrics", step, dict(values)))
                    link.queued_step = step

    def artifact(self, path: Path, kind: Kind, folder: str | None = None) -> bool:
        """Send a file or directory to each tracker if `kind` may leave the machine (LoggingConfig); `folder`
        defaults to its place in the run directory. Returns whether it was queued."""
        if not may_leave(kind, self.policy):
            return False
        if folder is None:
            folder = _folder_in(path, self.run_dir)
        for link in self.links:
            link.queue.append((kind, path, folder))
        self.flush()
        return True

    def flush(self) -> None:
        """Deliver each tracker's queue in order, stopping at its first failure (retried at the next call)."""
        moved = False
        for link in self.links:
            while link.queue:
                item = link.queue[0]
                try:
                    _deliver(link.tracker, item)
                except TrackerRejected as exc:  # for good: dropped, counted, the queue moves on
                    self._refused(link, item, exc)
                    continue
                except Exception as exc:  # a tracker's outage is counted and retried, never fatal
                    self._failed(link, exc)
                    break
                link.queue.popleft()
                if item[0] == "metrics":
                    link.delivered_step, moved = max(link.delivered_step, item[1]), True
                if link.failing:
                    log.info("%s at %s reached again; %d item(s) still queued", link.tracker.name,
                             link.tracker.where, len(link.queue))
                    link.failing = False
        if moved:
            self.save_state()

    def _failed(self, link: _Link, exc: Exception) -> None:
        self.failures += 1
        if not link.failing:
            log.warning("%s at %s failed (%s); training goes on, the run directory keeps every row, and "
                        "%d queued item(s) are retried at each step", link.tracker.name, link.tracker.where,
                        one_line(exc), len(link.queue))
        link.failing = True

    def _refused(self, link: _Link, item: tuple[str, Any, Any], exc: TrackerRejected) -> None:
        self.failures += 1
        link.queue.popleft()
        if not link.refused:
            what = f"step {item[1]}'s row" if item[0] == "metrics" else str(item[1])
            log.warning("%s at %s refused %s (%s); dropped (the run directory keeps it), further refusals "
                        "are counted in tracker/failures", link.tracker.name, link.tracker.where, what, exc)
        link.refused = True

    def save_state(self) -> None:
        """trackers.json: each tracker's run id and the last step it holds."""
        if self.run_dir is None or not self.remote:
            return
        state = read_state(self.run_dir)
        for link in self.links:
            if link.tracker.remote:
                state[link.tracker.name] = {**link.tracker.state(), "delivered_step": link.delivered_step}
        durable.write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def close(self, status: Status | None) -> None:
        """A last delivery attempt, then each tracker's run ends; what never arrived is named."""
        self.flush()
        for link in self.links:
            if link.queue:
                steps = [i[1] for i in link.queue if i[0] == "metrics"]
                log.warning("%s at %s never received %d row(s) (steps %s) and %d file(s); the rows are in "
                            "metrics.jsonl, and `medground train --resume` sends them", link.tracker.name,
                            link.tracker.where, len(steps), _span(steps), len(link.queue) - len(steps))
            try:
                link.tracker.close(status)
            except Exception as exc:  # the run is over; its files are complete whatever the tracker says
                log.warning("%s at %s could not end its run (%s)", link.tracker.name, link.tracker.where,
                            one_line(exc))
        self.save_state()


def may_leave(kind: Kind, policy: LoggingConfig) -> bool:
    """Whether a file of this kind may be sent to a tracker: text, images and models only when switched on."""
    match kind:
        case "completions":
            return policy.log_completions
        case "images":
            return policy.log_images
        case "adapter":
            return policy.log_adapter
        case "merged":
            return policy.log_merged
        case _:  # the config, plots, metric reports: numbers and settings
            return True


def _deliver(tracker: Tracker, item: tuple[str, Any, Any]) -> None:
    kind, what, where = item
    if kind == "metrics":
        tracker.metrics(what, where)
    elif kind in MODELS:
        tracker.model(what, where)
    else:
        tracker.artifact(what, where)


def _folder_in(path: Path, run_dir: Path | None) -> str:
    """A file's folder relative to the run directory (a directory's own place); '' at its top or
    outside it."""
    if run_dir is None:
        return ""
    try:
        rel = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return ""
    folder = rel if path.is_dir() else rel.parent
    return "" if folder == Path(".") else folder.as_posix()


def _span(steps: Sequence[int]) -> str:
    return "none" if not steps else f"{steps[0]}..{steps[-1]}" if len(steps) > 1 else str(steps[0])


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line (MLflow's and W&B's messages run to many)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The keys of a metrics row a tracker plots: numbers (not bools, not the step itself, not None)."""
    return {k: v for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A config tree as dotted keys with string values (MLflow params): `learner.lr`, list items by index
    (`stages.0.name`); an empty list or mapping is kept as its JSON (`[]`)."""
    if isinstance(tree, Mapping) and tree:
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, list | tuple) and tree:
        items = enumerate(tree)
    else:
        leaf = json.dumps(tree) if isinstance(tree, Mapping | list | tuple) else str(tree)
        return {prefix.removesuffix("."): leaf}
    out: dict[str, str] = {}
    for key, value in items:
        out |= flatten(value, f"{prefix}{key}.")
    return out


# -------------------------------------------------------------------------------------------------------
# Opening.


def open_trackers(cfg: RunConfig, run_dir: Path, attach: bool = False) -> Trackers:
    """The trackers `cfg.logging.trackers` names, continuing the run's tracker runs kept in trackers.json.
    `attach` (`medground eval`, `medground export`): the remote trackers only, their runs' status untouched.
    A tracker that cannot be reached: TrackerUnreachable (logging.on_tracker_error=stop) or a warning."""
    saved = read_state(run_dir)
    trackers: list[Tracker] = []
    for name in cfg.logging.trackers:
        if attach and name == "tensorboard":
            continue
        try:
            trackers.append(_open(name, cfg, run_dir, saved.get(name), attach))
        except TrackerUnreachable as exc:
            if cfg.logging.on_tracker_error == "stop":
                Trackers(trackers).close("FAILED")  # those opened before it
                raise
            log.warning("%s; going on without it (logging.on_tracker_error=warn)", exc)
    delivered = {name: int(s.get("delivered_step", -1)) for name, s in saved.items()}
    hub = Trackers(trackers, cfg.logging, run_dir, delivered)
    warn_privacy(cfg.logging, trackers)
    hub.save_state()
    if not attach:
        hub.artifact(run_dir / "resolved_config.json", "config", "")
    return hub


def _open(name: str, cfg: RunConfig, run_dir: Path, saved: dict[str, Any] | None, attach: bool) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir / "tensorboard")
    try:
        if name == "mlflow":
            from services.training.tracker_mlflow import MlflowTracker
            return MlflowTracker.open(cfg, run_dir, saved, attach)
        from services.training.tracker_wandb import WandbTracker
        return WandbTracker.open(cfg, run_dir, saved, attach)
    except ModuleNotFoundError as exc:
        from services.config import ConfigError

        raise ConfigError(f"logging.trackers names {name} but {exc.name} is not installed; install the "
                          f"extra (pip install 'medground[{name}]') or remove {name} from logging.trackers"
                          ) from exc


def warn_privacy(policy: LoggingConfig, trackers: Sequence[Tracker]) -> None:
    """One warning when a switch lets patient data leave the machine, naming what and where."""
    remote = [f"{t.name} ({t.where})" for t in trackers if t.remote]
    what = (["text (completions, thinks, phrases, knowledge and record ids of samples/ and eval/; "
             "logging.log_completions)"] if policy.log_completions else []) + \
           (["images (evaluation overlays: patient pixels; logging.log_images)"] if policy.log_images else [])
    if remote and what:
        log.warning("patient data leaves this machine: %s go to %s; set these false to keep it in the run "
                    "directory", " and ".join(what), ", ".join(remote))


# -------------------------------------------------------------------------------------------------------
# The commands that add to a finished run: `medground eval`, `medground export --merged`.


def attach(run_dir: Path) -> Trackers:
    """The run's remote trackers (its resolved config's logging section), continuing its tracker runs; close
    with `close(None)` so each run's status stays as training left it."""
    from services.config import load_run_config

    return open_trackers(load_run_config(run_dir), run_dir, attach=True)


def log_evaluation(hub: Trackers, metrics: Mapping[str, Any], predictions: Path, label: str) -> None:
    """`medground eval`'s numbers as `cli_eval/<name>` at the evaluated checkpoint's step, its report file
    (`eval/cli-<label>.json`), and its predictions with logging.log_completions."""
    step = _checkpoint_step(predictions.parent.parent, label)
    hub.row(step, {f"cli_eval/{k.removeprefix('eval/')}": v for k, v in numeric(metrics).items()}, again=True)
    hub.artifact(predictions.with_suffix(".json"), "report")
    hub.artifact(predictions, "completions")


def _checkpoint_step(run_dir: Path, label: str) -> int:
    """The step of an evaluated adapter: `step-N` is N; the final adapter is the last checkpoint's."""
    from services.checkpointing import latest_checkpoint

    name = latest_checkpoint(run_dir).name if label == "final" else label
    return int(name.removeprefix("step-"))
