"""A new user's wrong inputs (issue 35): each is one line naming the fix, exit 1, before heavy work starts.

`serve` checks paths, port and files before Ray; `--set` refuses a bool for a number and the reverse, and says
when a stage's own field overrides it; `validate-config --show` prints JSON only; `data inspect` names missing
images; `eval --out`; `--version`; help shows no `<bool>`; the progress bar ends its line before an error.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.config import load_config, write_resolved

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "deploy" / "configs" / "demo.yaml"
runner = CliRunner()


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` must fail before it reaches Ray: reaching serve_forever is a test failure."""
    import services.serve.launch as launch

    def reached(*_: Any, **__: Any) -> None:
        raise AssertionError("serve reached Ray despite a bad option")

    monkeypatch.setattr(launch, "serve_forever", reached)


def _one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return str(lines[0])


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def _run_dir(tmp_path: Path, model: Path) -> Path:
    cfg = load_config(DEMO, [f"model.path={model}", f"data.knowledge_dir={ROOT / 'deploy' / 'knowledge'}"])
    run = tmp_path / "run"
    write_resolved(cfg, run)
    return run


def test_serve_checks_paths_before_ray(tmp_path: Path, no_ray: None) -> None:
    model = _model_dir(tmp_path)
    run = _run_dir(tmp_path, model)
    nope = str(tmp_path / "nope")
    _one_line_error(runner.invoke(app, ["serve", "--run-dir", nope]), "--run-dir", "does not exist")
    _one_line_error(runner.invoke(app, ["serve", "--run-dir", str(model)]), "not a run directory")
    _one_line_error(runner.invoke(app, ["serve", "--model", nope]), "--model", "does not exist")
    _one_line_error(runner.invoke(app, ["serve", "--model", str(tmp_path)]), "config.json")
    _one_line_error(runner.invoke(app, ["serve", "--model", str(model), "--adapter", nope]),
                    "--adapter", "does not exist")
    _one_line_error(runner.invoke(app, ["serve", "--run-dir", str(run), "--adapter", str(model)]),
                    "not a servable adapter")
    shutil.rmtree(model)
    _one_line_error(runner.invoke(app, ["serve", "--run-dir", str(run)]), "model.path")


def test_serve_checks_the_port_before_ray(tmp_path: Path, no_ray: None) -> None:
    model = _model_dir(tmp_path)
    _one_line_error(runner.invoke(app, ["serve", "--model", str(model), "--port", "70000"]), "1..65535")
    _one_line_error(runner.invoke(app, ["serve", "--model", str(model), "--port", "0"]), "1..65535")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        _one_line_error(runner.invoke(app, ["serve", "--model", str(model), "--port", str(port)]), "in use")


def test_serve_fails_fast_without_importing_ray_or_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom services.cli.main import main\nsys.argv = ['medground', 'serve', '--run-dir', "
            f"{str(tmp_path / 'nope')!r}]\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print(sorted(m for m in ('ray', 'torch', 'vllm') if m in sys.modules), file=sys.stdout)\n"
            "    raise\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == "[]"  # neither Ray nor torch was imported
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert elapsed < 15, elapsed  # ~0.6 s on an idle 2-core machine; generous for a loaded CI runner


def test_set_refuses_bool_for_number_and_the_reverse() -> None:
    _one_line_error(runner.invoke(app, ["validate-config", str(DEMO), "--set", "eval.every=true"]),
                    "eval.every takes a number")
    _one_line_error(runner.invoke(app, ["validate-config", str(DEMO), "--set", "learner.lr=true"]),
                    "learner.lr takes a number")
    _one_line_error(runner.invoke(app, ["validate-config", str(DEMO), "--set", "rollout.inject_knowledge=1"]),
                    "true or false")
    fine = runner.invoke(app, ["validate-config", str(DEMO), "--set", "rollout.inject_knowledge=false"])
    assert fine.exit_code == 0


def test_set_shadowed_by_a_stage_says_so_and_validate_show_is_json_only() -> None:
    result = runner.invoke(app, ["validate-config", str(DEMO), "--show", "--set", "learner.lr=1e-5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["learner"]["lr"] == 1e-5  # stdout is the JSON alone
    assert "does not reach stage 'grounding'" in result.stderr and "--set stages.0.lr=1e-5" in result.stderr
    quiet = runner.invoke(app, ["validate-config", str(DEMO), "--set", "stages.0.lr=1e-5"])
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr


def test_version_and_help_without_bool_on_flags() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("medground ")
    for command in (["validate-config"], ["pretrain-base"], ["submit"], ["data", "inspect"], ["init-model"]):
        shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
        assert shown.exit_code == 0 and "<bool>" not in shown.stdout, shown.stdout


def test_data_inspect_names_missing_images(tmp_path: Path) -> None:
    from services.data.synth import make_spec, write_dataset

    manifest = write_dataset(make_spec("demo", splits={"train": 6, "val": 2, "test": 0}), tmp_path, seed=0,
                             manifest_name="manifest.jsonl")
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for record in records[:2]:
        (manifest.parent / record["image"]).unlink()
    result = runner.invoke(app, ["data", "inspect", str(manifest)])
    assert result.exit_code == 1
    assert "2 of 8 records point at an image that does not exist" in result.stderr
    for record in records[:2]:
        assert f"(record {record['id']})" in result.stderr
    allowed = runner.invoke(app, ["data", "inspect", str(manifest), "--allow-missing"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: 2 of 8 records" in allowed.stderr


def test_eval_out_writes_outside_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.evaluation.run as run_module
    import services.training.trackers as trackers

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)

    def fake_eval(run_dir: Path, *_: Any) -> tuple[dict[str, Any], Path]:
        path = run_dir / "eval" / "cli-final.jsonl"
        path.write_text('{"id": "a"}\n')
        path.with_suffix(".json").write_text('{"eval/A@0.5": 50.0}\n')
        return {"eval/A@0.5": 50.0}, path

    class Hub:
        def close(self, _: Any) -> None:
            pass

    monkeypatch.setattr(run_module, "evaluate_run", fake_eval)
    monkeypatch.setattr(trackers, "attach", lambda _: Hub())
    monkeypatch.setattr(trackers, "log_evaluation", lambda *_: None)
    out = tmp_path / "elsewhere" / "eval.jsonl"
    result = runner.invoke(app, ["eval", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == '{"id": "a"}\n' and json.loads(out.with_suffix(".json").read_text())
    _one_line_error(runner.invoke(app, ["eval", str(run), "--out", str(tmp_path / "x.csv")]), ".jsonl")


def test_the_progress_bar_ends_its_line_before_an_error() -> None:
    from services.training.train_loop import progress_bar

    buffer = io.StringIO()
    with pytest.raises(RuntimeError), progress_bar(10, 0, "demo", file=buffer) as bar:
        bar.update(3)
        raise RuntimeError("a step failed")
    assert buffer.getvalue().endswith("\n")  # the error that follows starts on a line of its own


def test_what_a_new_users_walkthrough_broke_is_one_line_now(tmp_path: Path, no_ray: None) -> None:
    """A damaged resolved_config.json (was a JSONDecodeError traceback), a file given as --model (was "does
    not exist"), a negative split size for synth (was a data set without a train split, exit 0)."""
    model = _model_dir(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "resolved_config.json").write_text("{not json")
    _one_line_error(runner.invoke(app, ["serve", "--run-dir", str(damaged)]), "is damaged", "another run")
    _one_line_error(runner.invoke(app, ["serve", "--model", str(model / "config.json")]),
                    "is a file, not a directory")
    synth = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--n-train", "-1"])
    assert synth.exit_code == 2 and "greater than or equal to 0" in synth.output, synth.output
    assert not (tmp_path / "s" / "manifest.jsonl").exists()


def test_a_line_cut_short_is_reported_at_its_own_column(tmp_path: Path) -> None:
    from services.data.jsonl import BadLine, read_jsonl

    line = '{"id": "broken", "boxes": [[1,2,3'
    (tmp_path / "m.jsonl").write_text('{"id": "ok"}\n' + line + "\n")
    (_, first), (number, bad) = list(read_jsonl(tmp_path / "m.jsonl"))
    assert first == {"id": "ok"} and number == 2 and isinstance(bad, BadLine)
    assert f"at column {len(line) + 1}" in bad.reason, bad


def test_a_preset_whose_fields_are_set_otherwise_and_a_partial_stage_reward_say_so(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["validate-config", str(DEMO), "--show"])
    resolved = tmp_path / "resolved.json"  # every field explicit, as a run's resolved_config.json
    resolved.write_text(shown.stdout)
    result = runner.invoke(app, ["validate-config", str(resolved), "--set", "learner.grpo.loss=gspo"])
    assert result.exit_code == 0, result.output
    assert ("learner.grpo.loss=gspo, but ratio_level=token, eps_low=0.2, eps_high=0.2 are set explicitly"
            in result.stderr)
    clean = runner.invoke(app, ["validate-config", str(DEMO), "--set", "learner.grpo.loss=gspo"])
    assert clean.exit_code == 0 and "note:" not in clean.stderr  # the preset alone: nothing to say
    staged = runner.invoke(app, ["validate-config", str(DEMO), "--set",
                                 "stages.0.reward.aggregation=normalize_then_sum"])
    assert staged.exit_code == 0, staged.output
    assert "gives stage 'grounding' its own reward section" in staged.stderr and "schedule" in staged.stderr
