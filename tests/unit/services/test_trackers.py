"""Experiment trackers (services/training/trackers.py and its backends): the delivery queue (failures counted,
retried in order, never a step twice, resume backfills), a tracker unreachable at start, the `logging:`
section, and the real MLflow (a sqlite store) and W&B (offline) backends fed by the in-process driver of
tests/driver_fakes.py: what they received, and that by default no image and no text of a record or completion
is among it. (A real `mlflow server`, a stop and a resume, and the server killed mid-run:
tests/integration/test_tracking_mlflow.py, on the same fakes.)"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from driver_fakes import (
    QueueControl,
    RecordingLearner,
    ScriptedPool,
    handles,
    varied_answer,
    write_records,
)
from test_train_loop import _config

from services.config import ConfigError, RunConfig, validate_tree
from services.training import train_loop
from services.training.metrics import MetricsWriter, read_metrics
from services.training.trackers import (
    TrackerRejected,
    Trackers,
    TrackerUnreachable,
    flatten,
    log_evaluation,
    numeric,
    open_trackers,
    read_state,
)


class Recording:
    """A remote tracker that records what it receives; a call while `down` raises as a dead server does."""

    name, where, remote = "rec", "rec://test", True

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: dict[int, dict[str, float]] = {}
        self.files: list[tuple[str, str]] = []
        self.down = False
        self.closed: list[Any] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")

    def metrics(self, step: int, values: Any) -> None:
        self._check()
        self.steps.append(step)
        self.rows[step] = {**self.rows.get(step, {}), **values}

    def artifact(self, path: Path, folder: str) -> None:
        self._check()
        self.files.append((folder, path.name))

    def model(self, path: Path, folder: str) -> None:
        self.artifact(path, folder)

    def state(self) -> dict[str, Any]:
        return {"run_id": "r1"}

    def close(self, status: Any) -> None:
        self.closed.append(status)


# -------------------------------------------------------------------------------------------------------
# Delivery.


def test_a_tracker_down_mid_run_loses_no_row_counts_the_failures_and_catches_up_in_order(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    writer = MetricsWriter(tmp_path, trackers=Trackers([rec], run_dir=tmp_path))
    for step in range(6):
        rec.down = step in (2, 3)  # the server is gone while rows 2 and 3 are sent
        writer.log(step, {"reward/total": float(step), "stage": "rl"})
    rows = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert sorted(rows) == [0, 1, 2, 3, 4, 5]  # metrics.jsonl has every row
    # row N counts the deliveries that failed since row N-1 was written, and what waited when it was:
    # row 2's send failed (row 3: 1 failure, row 2 queued); row 3's retry of row 2 failed (row 4: 1, rows 2
    # and 3 queued);
    # at row 4 the server is back and rows 2, 3, 4 go in order (row 5: 0, 0).
    assert [(rows[s]["tracker/failures"], rows[s]["tracker/pending"]) for s in range(6)] == \
        [(0, 0), (0, 0), (0, 0), (1, 1), (1, 2), (0, 0)]
    assert rec.steps == [0, 1, 2, 3, 4, 5]
    assert rec.rows[3] == numeric(rows[3])  # what the tracker holds at a step is the row of metrics.jsonl
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rec at rec://test failed (ConnectionError: connection refused)" in warnings[0].message
    assert read_state(tmp_path) == {"rec": {"run_id": "r1", "delivered_step": 5}}
    writer.close("FINISHED")
    assert rec.closed == ["FINISHED"]


def test_rows_a_tracker_never_received_are_named_at_close_and_sent_on_resume(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    writer = MetricsWriter(tmp_path, trackers=Trackers([rec], run_dir=tmp_path))
    for step in range(5):
        rec.down = step >= 2
        writer.log(step, {"reward/total": float(step)})
    writer.close("FAILED")  # the run dies with rows 2..4 undelivered
    assert "rec at rec://test never received 3 row(s) (steps 2..4)" in caplog.text
    assert read_state(tmp_path)["rec"]["delivered_step"] == 1

    again = Recording()  # the resumed run (checkpoint at step 3): rows 2, 3 go first, row 4 is redone
    writer = MetricsWriter(tmp_path, trackers=Trackers([again], run_dir=tmp_path, delivered={"rec": 1}))
    writer.truncate_after(3)
    writer.log(4, {"reward/total": 4.5})
    assert again.steps == [2, 3, 4] and again.rows[4]["reward/total"] == 4.5


def test_a_resumed_run_never_sends_a_step_the_tracker_holds(tmp_path: Path) -> None:
    rec = Recording()
    writer = MetricsWriter(tmp_path, trackers=Trackers([rec], run_dir=tmp_path))
    for step in range(6):
        writer.log(step, {"reward/total": float(step)})
    resumed = Recording()  # the crash came after step 5 was sent; the newest checkpoint is step 3
    writer = MetricsWriter(tmp_path, trackers=Trackers([resumed], run_dir=tmp_path, delivered={"rec": 5}))
    writer.truncate_after(3)
    for step in (4, 5, 6):
        writer.log(step, {"reward/total": float(step)})
    assert resumed.steps == [6]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5, 6]


def test_an_item_a_tracker_refuses_for_good_is_dropped_and_counted_not_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(Recording):
        def metrics(self, step: int, values: Any) -> None:
            if step in (1, 2):
                raise TrackerRejected("INVALID_PARAMETER_VALUE: no")
            super().metrics(step, values)
    rec = Refusing()
    writer = MetricsWriter(tmp_path, trackers=Trackers([rec], run_dir=tmp_path))
    for step in range(4):
        writer.log(step, {"reward/total": float(step)})
    assert rec.steps == [0, 3]  # 1 and 2 were refused, 3 was not held up behind them
    assert [r["tracker/failures"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 0, 1, 1]
    assert caplog.text.count("refused") == 1 and "rec at rec://test refused step 1's row" in caplog.text


def test_mlflow_refusals_are_told_from_outages(tmp_path: Path) -> None:
    """A run deleted in MLflow's UI refuses every later item (INVALID_PARAMETER_VALUE): dropped, not retried
    forever."""
    from services.training.tracker_mlflow import MlflowTracker

    cfg = RunConfig.model_validate({**_tree(), "logging": {"trackers": ["mlflow"], "mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}})
    tracker = MlflowTracker.open(cfg, tmp_path / "run", None, attach=False)
    tracker.metrics(0, {"reward/total": 1.0})
    tracker.client.delete_run(tracker.run_id)
    with pytest.raises(TrackerRejected, match=r"INVALID_PARAMETER_VALUE: .* must be in the 'active' state"):
        tracker.metrics(1, {"reward/total": 1.0})


def test_files_leave_only_when_their_switch_is_on(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    for name in ("resolved_config.json", "eval/step-1.jsonl"):
        (tmp_path / name).write_text("{}")
    rec = Recording()
    hub = Trackers([rec], validate_logging({}), tmp_path)
    assert hub.artifact(tmp_path / "resolved_config.json", "config")
    assert not hub.artifact(tmp_path / "eval" / "step-1.jsonl", "completions")
    assert not hub.artifact(tmp_path / "eval", "images")
    assert not hub.artifact(tmp_path / "eval", "adapter")
    on = Trackers([rec], validate_logging({"log_completions": True, "log_adapter": True}), tmp_path)
    assert on.artifact(tmp_path / "eval" / "step-1.jsonl", "completions")
    assert on.artifact(tmp_path / "eval", "adapter", "adapter")
    assert rec.files == [("", "resolved_config.json"), ("eval", "step-1.jsonl"), ("adapter", "eval")]


def validate_logging(section: dict[str, Any]) -> Any:
    return RunConfig.model_validate({**_tree(), "logging": section}).logging


def _tree() -> dict[str, Any]:
    return {"model": {"path": "m"}, "data": {"manifest": "d"},
            "stages": [{"name": "s", "kind": "sft", "steps": 1}]}


# -------------------------------------------------------------------------------------------------------
# The section, names, params.


def test_the_logging_section_defaults_keep_everything_local_and_refuse_mistakes() -> None:
    section = validate_logging({})
    assert section.trackers == ("tensorboard",)
    assert not (section.log_images or section.log_completions or section.log_adapter or section.log_merged)
    with pytest.raises(ConfigError, match=r"logging.trackers: .*names a tracker twice"):
        validate_tree({**_tree(), "logging": {"trackers": ["mlflow", "mlflow"]}}, "t.yaml")
    with pytest.raises(ConfigError, match=r"logging.trackers.0: .*'tensorboard', 'mlflow' or 'wandb'"):
        validate_tree({**_tree(), "logging": {"trackers": ["comet"]}}, "t.yaml")
    with pytest.raises(ConfigError, match=r"logging.log_image: unknown key; did you mean 'log_images'"):
        validate_tree({**_tree(), "logging": {"log_image": True}}, "t.yaml")


def test_metric_names_mlflow_accepts_and_the_config_as_params() -> None:
    from services.training.tracker_mlflow import mlflow_key

    assert mlflow_key("eval/A@0.5") == "eval/A_at_0.5"
    assert mlflow_key("eval/2-10%/mIoU") == "eval/2-10pct/mIoU"
    assert mlflow_key("time/step_s") == "time/step_s" and mlflow_key("a+b") == "a_b"
    assert flatten({"a": {"b": 1, "c": [2, {"d": None}]}, "e": [], "f": "x"}) == \
        {"a.b": "1", "a.c.0": "2", "a.c.1.d": "None", "e": "[]", "f": "x"}


def test_a_tracker_unreachable_at_start_stops_with_one_line_or_warns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from learner.distributed import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = RunConfig.model_validate({**_tree(), "logging": {"trackers": ["tensorboard", "mlflow"],
                                                           "mlflow": {"tracking_uri": uri}}})
    (tmp_path / "resolved_config.json").write_text("{}")
    with pytest.raises(TrackerUnreachable) as stopped:
        open_trackers(cfg, tmp_path)
    message = str(stopped.value)
    assert message.startswith(f"MLflow at {uri} cannot be reached (") and "\n" not in message
    assert "logging.on_tracker_error=warn" in message
    warn = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"on_tracker_error": "warn"})})
    hub = open_trackers(warn, tmp_path)
    assert [link.tracker.name for link in hub.links] == ["tensorboard"]
    assert f"MLflow at {uri} cannot be reached" in caplog.text and "going on without it" in caplog.text
    hub.close("FINISHED")


def test_a_tracker_whose_package_is_missing_names_the_extra(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    cfg = RunConfig.model_validate({**_tree(), "logging": {"trackers": ["wandb"]}})
    with pytest.raises(ConfigError,
                       match=r"names wandb but wandb is not installed; .*pip install 'medground\[wandb\]'"):
        open_trackers(cfg, tmp_path)


def test_medground_eval_adds_its_numbers_at_the_checkpoint_step(tmp_path: Path) -> None:
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step}" / "COMPLETE").write_text(f"{step}\n")
    (tmp_path / "eval").mkdir()
    predictions = tmp_path / "eval" / "cli-final.jsonl"
    predictions.write_text('{"text": "<answer>..."}\n')
    predictions.with_suffix(".json").write_text("{}")
    rec = Recording()
    hub = Trackers([rec], validate_logging({}), tmp_path, delivered={"rec": 4})  # training sent steps 0..4
    log_evaluation(hub, {"eval/A@0.5": 0.25, "records": 4, "adapter": "runs/x/adapter"}, predictions, "final")
    assert rec.rows == {4: {"cli_eval/A@0.5": 0.25, "cli_eval/records": 4}}
    assert rec.files == [("eval", "cli-final.json")]  # the predictions hold text: not by default


# -------------------------------------------------------------------------------------------------------
# The real backends, fed by the in-process driver.


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))


def _tracked_run(tmp_path: Path, logging_section: dict[str, Any], resume: bool = False, on_step: Any = None,
                 **over: Any) -> tuple[Path, RecordingLearner]:
    """The fake driver's two-stage run (evaluations with overlays at 0, 2, 4 and the end) with `logging`."""
    cfg = _config(tmp_path, logging=logging_section, eval={"every": 2, "max_samples": 2, "overlays": 2},
                  **over)
    manifest = write_records(tmp_path / "data", n_train=6, n_val=2)
    learner = RecordingLearner()
    run_dir = tmp_path / "runs" / cfg.name

    def start(c: RunConfig, d: Path) -> Any:
        return handles(c, d, manifest, ScriptedPool(varied_answer), learner, QueueControl(),
                       writer=MetricsWriter(d, trackers=open_trackers(c, d)))
    train_loop.run(cfg, run_dir=run_dir, resume=resume, on_step=on_step, start=start)
    return run_dir, learner


# Text a record or a completion carries: the fake records' phrases ("lesion i") and the fake model's answers.
TEXTS = ("lesion", "<think>", "<answer>", "bbox_2d")


def test_by_default_no_image_and_no_text_of_a_record_or_completion_reaches_a_tracker(
        tmp_path: Path, offline_wandb: None) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir, _ = _tracked_run(tmp_path, {"trackers": ["tensorboard", "mlflow", "wandb"], "samples_every": 1,
                                         "mlflow": {"tracking_uri": uri}})
    # the run directory keeps its own files: overlays, predictions with text, training samples
    assert list((run_dir / "samples").glob("step-*/*.png"))
    assert list((run_dir / "samples").glob("train-step-*.jsonl"))
    assert "<answer>" in (run_dir / "eval" / "step-5.jsonl").read_text()

    client = MlflowClient(uri)
    run_id = read_state(run_dir)["mlflow"]["run_id"]
    got = client.get_run(run_id).data
    sent = [*got.params, *got.params.values(), *got.metrics, *got.tags.values()]
    files = _mlflow_files(client, run_id)
    sent += [(Path(client.download_artifacts(run_id, f, str(tmp_path / "dl"))).read_text(errors="replace"))
             for f in files if not f.endswith(".png")]
    reports = [f"eval/step-{step}.json" for step in (0, 2, 4, 5)]  # each evaluation's numbers
    assert sorted(f for f in files if not f.startswith("plots/")) == [*reports, "resolved_config.json"]
    wandb_files = [p.relative_to(w) for w in run_dir.glob("wandb/offline-run-*/files")
                   for p in w.rglob("*") if p.is_file()]
    assert sorted(str(p) for p in wandb_files if p.parts[0] != "plots") == \
        [*reports, "requirements.txt", "resolved_config.json"]
    sent += [json.dumps(list(_wandb_strings(path)))
             for path in run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    for text in TEXTS:
        assert not any(text in s for s in sent), f"{text!r} reached a tracker"
    # the content, for once: every numeric key of every row at its step, and the config as params
    history = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)}
               for k in ("reward/total", "eval/A_at_0.5")}
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert history["reward/total"] == {r["step"]: r["reward/total"] for r in rows if "reward/total" in r}
    assert history["eval/A_at_0.5"] == {r["step"]: r["eval/A@0.5"] for r in rows if "eval/A@0.5" in r}
    assert got.params["stages.1.name"] == "rl" and got.params["logging.samples_every"] == "1"
    assert client.get_run(run_id).info.status == "FINISHED" and client.get_run(run_id).info.run_name == "fake"


def test_switching_text_and_images_on_sends_them_and_warns_once(
        tmp_path: Path, offline_wandb: None, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir, _ = _tracked_run(tmp_path, {"trackers": ["mlflow"], "samples_every": 2, "log_images": True,
                                         "log_completions": True, "mlflow": {"tracking_uri": uri}})
    leaks = [r.message for r in caplog.records if "patient data leaves this machine" in r.message]
    assert len(leaks) == 1 and "text (completions" in leaks[0] and "images (evaluation overlays" in leaks[0]
    assert f"mlflow ({uri})" in leaks[0]
    files = _mlflow_files(MlflowClient(uri), read_state(run_dir)["mlflow"]["run_id"])
    assert {"samples/train-step-4.jsonl", "eval/step-5.jsonl"} <= set(files)
    assert sum(f.startswith("samples/step-5/") and f.endswith(".png") for f in files) == 2


def test_a_wandb_offline_run_holds_every_row_and_a_resume_continues_it_without_a_repeated_step(
        tmp_path: Path, offline_wandb: None) -> None:
    section = {"trackers": ["wandb"]}

    def stop(step: int, row: dict[str, Any]) -> None:
        if step == 3:
            raise train_loop.StopRequested("SIGTERM received")
    with pytest.raises(train_loop.RunFailed):
        _tracked_run(tmp_path, section, on_step=stop)
    run_dir, _ = _tracked_run(tmp_path, section, resume=True)

    runs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and len({p.name for p in runs}) == 1  # one W&B run id, continued
    history: list[dict[str, Any]] = []
    for path in runs:
        records = list(_wandb_records(path))
        history += [{(i.nested_key[0] if i.nested_key else i.key): json.loads(i.value_json)
                     for i in r.history.item}
                    for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [0, 1, 2, 3, 4, 5]
    for row, got in zip(read_metrics(run_dir / "metrics.jsonl"), history, strict=True):
        assert {k: got[k] for k in numeric(row)} == pytest.approx(numeric(row))
    files = {p.relative_to(f).as_posix()
             for f in run_dir.glob("wandb/offline-run-*/files") for p in f.rglob("*")}
    assert {"resolved_config.json", "plots/reward.png", "eval/step-5.json"} <= files
    first = next(r for r in _wandb_records(runs[0]) if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in first.run.config.update}
    assert config["stages"][1]["name"] == "rl" and first.run.display_name == "fake"


def _mlflow_files(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _mlflow_files(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file (`run-<id>.wandb`), decoded with W&B's own protobuf schema. The file is
    a W&B header then LevelDB's log format: 32 KiB blocks of chunks, each `crc32 u32, length u16, type u8`
    (1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or kind == 0:  # the rest of the block is padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_strings(path: Path) -> Iterator[str]:
    for record in _wandb_records(path):
        yield str(record)


def test_training_samples_hold_what_the_learner_trained_on(tmp_path: Path) -> None:
    run_dir, learner = _tracked_run(tmp_path, {"trackers": [], "samples_every": 1, "samples_groups": 2})
    rows_by_step = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert sorted(p.name for p in (run_dir / "samples").glob("train-step-*.jsonl")) == \
        ["train-step-3.jsonl", "train-step-4.jsonl", "train-step-5.jsonl"]  # the GRPO steps (SFT: 1, 2)
    for step, batch in zip((3, 4, 5), learner.batches, strict=True):
        path = run_dir / "samples" / f"train-step-{step}.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == 8 and all(r["kept"] for r in lines)  # 2 kept groups of G = 4
        # the advantages are the learner's own, completion by completion
        assert [r["advantage"] for r in lines] == pytest.approx([s.advantage for s in batch.samples])
        for r in lines:
            i = int(r["prompt_id"].rsplit("-", 1)[1])
            assert r["text"].startswith("<think>t</think><answer>")
            # record i's box is (10 + i, 10, 40 + i, 50), the answer's (x1, 10, x1 + 30, 50): both 30 x 40, so
            # IoU = overlap / (2 * 1200 - overlap) with overlap = (30 - |x1 - 10 - i|) * 40
            overlap = max(30 - abs(r["box"][0] - 10 - i), 0) * 40
            assert r["box"][1:] == [10.0, r["box"][0] + 30, 50.0]
            assert r["reward"]["iou"] == pytest.approx(overlap / (2400 - overlap))
            assert r["reward"]["acc"] == pytest.approx(r["reward"]["iou"])  # accuracy: raw_iou
            assert r["tau"] is None and r["step"] == step
            assert r["adapter_version"] == rows_by_step[step]["batch/adapter_version_max"]


def test_medground_eval_and_export_add_to_the_runs_mlflow_run(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI commands that follow training attach to its MLflow run (status untouched): eval's numbers at
    the checkpoint's step and its report, not its predictions; the merged export, registered."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from services.cli import app
    from services.config import write_resolved

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    section = {"trackers": ["mlflow"], "log_merged": True,
               "mlflow": {"tracking_uri": uri, "register_model": "grounder"}}
    cfg = RunConfig.model_validate({**_tree(), "name": "done", "output_dir": str(tmp_path / "runs"),
                                    "logging": section})
    run_dir = tmp_path / "runs" / "done"
    write_resolved(cfg, run_dir)
    training = open_trackers(cfg, run_dir)
    for step in range(4):
        training.row(step, {"reward/total": 0.1 * step})
    training.close("FINISHED")
    (run_dir / "checkpoints" / "step-3").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-3" / "COMPLETE").write_text("3\n")

    def evaluate_run(run: Path, step: Any, max_samples: Any, address: Any,
                     kl_samples: int = 0) -> tuple[dict[str, Any], Path]:
        path = run / "eval" / "cli-final.jsonl"
        path.parent.mkdir()
        path.write_text('{"text": "<answer>lesion</answer>"}\n')
        path.with_suffix(".json").write_text('{"eval/A@0.5": 0.5}\n')
        return {"eval/A@0.5": 0.5, "records": 2}, path

    def export_merged(run: Path, out: Path, step: Any) -> dict[str, Any]:
        out.mkdir()
        (out / "config.json").write_text("{}")
        return {"merged_from": {"base_model": "m", "adapter_version": 4, "checkpoint": "final"},
                "dtype": "float32"}
    monkeypatch.setattr("services.evaluation.run.evaluate_run", evaluate_run)
    monkeypatch.setattr("services.models.merge.export_merged", export_merged)
    runner = CliRunner()
    for args in (["eval", str(run_dir)], ["export", str(run_dir), "--merged", str(tmp_path / "merged")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output

    client = MlflowClient(uri)
    run_id = read_state(run_dir)["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"  # attached, not reopened
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "cli_eval/A_at_0.5")] == [(3, 0.5)]
    assert [m.step for m in client.get_metric_history(run_id, "reward/total")] == [0, 1, 2, 3]
    files = {f.path for folder in ("eval", "merged") for f in client.list_artifacts(run_id, folder)}
    assert files == {"eval/cli-final.json", "merged/config.json"}  # the predictions (text) stayed
    [version] = client.search_model_versions("name='grounder'")
    assert version.run_id == run_id and version.source.endswith("/merged")
