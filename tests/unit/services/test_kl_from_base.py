"""Forward KL from the base (services/evaluation/kl.py): the per-token reduction against a hand computation,
a real tiny run whose zero adapter is the base (KL 0) and whose perturbed adapter is not, and the bad
inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.config import load_config, write_resolved
from services.evaluation.kl import kl_from_base, token_kl

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "deploy" / "configs" / "demo.yaml"


def _hand_kl(p_logits: np.ndarray, q_logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sum_t mask * sum_v p (log p - log q), written out in float64 numpy."""
    out = np.zeros(p_logits.shape[0])
    for b in range(p_logits.shape[0]):
        for t in range(p_logits.shape[1]):
            if not mask[b, t]:
                continue
            p = np.exp(p_logits[b, t] - p_logits[b, t].max())
            p /= p.sum()
            q = np.exp(q_logits[b, t] - q_logits[b, t].max())
            q /= q.sum()
            out[b] += float(np.sum(p * (np.log(p) - np.log(q))))
    return out


def test_token_kl_matches_a_hand_computation_and_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    p = 3.0 * torch.randn(3, 5, 11, generator=gen)  # [B, T, V]
    q = 3.0 * torch.randn(3, 5, 11, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.float32)
    got = token_kl(p, q, mask)  # [B]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), _hand_kl(p.double().numpy(), q.double().numpy(), mask.numpy()),
                               rtol=1e-5, atol=1e-6)
    per_position = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p),
                                                     torch.distributions.Categorical(logits=q))  # [B, T]
    torch.testing.assert_close(got, (per_position * mask).sum(-1), rtol=1e-5, atol=1e-6)
    assert (got > 0).all()


def test_token_kl_is_zero_for_identical_logits_and_ignores_masked_tokens() -> None:
    p = torch.randn(2, 4, 7)
    assert token_kl(p, p.clone(), torch.ones(2, 4)).abs().max().item() == 0.0
    q = torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.float32)
    changed = q.clone()
    changed[0, 2] = float("nan")  # whatever a masked position holds, it adds nothing
    changed[1, 1:] = 100.0 * torch.randn(3, 7)
    torch.testing.assert_close(token_kl(p, changed, mask), token_kl(p, q, mask))


def test_token_kl_handles_forbidden_tokens_and_refuses_bad_shapes() -> None:
    p = torch.tensor([[[0.0, 1.0, float("-inf")]]])  # a token forbidden in both: p = 0 adds nothing
    q = torch.tensor([[[1.0, 0.0, float("-inf")]]])
    got = float(token_kl(p, q, torch.ones(1, 1))[0])
    assert got == pytest.approx(float(_hand_kl(p[..., :2].double().numpy(), q[..., :2].double().numpy(),
                                               np.ones((1, 1)))[0]), rel=1e-6)
    with pytest.raises(ValueError, match=r"mask \[B, T\]"):
        token_kl(p, q, torch.ones(1, 2))


def _run(tmp_path: Path, model_dir: Path, split_sizes: dict[str, int]) -> Path:
    from services.data.synth import make_spec, write_dataset

    manifest = write_dataset(make_spec("demo", splits=split_sizes), tmp_path / "data", seed=0)
    cfg = load_config(DEMO, [f"model.path={model_dir}", f"data.manifest={manifest}",
                             f"data.knowledge_dir={ROOT / 'deploy' / 'knowledge'}",
                             "rollout.sampling.max_new_tokens=12"])
    run = tmp_path / "run"
    write_resolved(cfg, run)
    return run


def _adapter(model_dir: Path, out: Path, kind: str, scale: float) -> None:
    """A run's exported adapter: fresh (lora_B zero: the base itself), or with lora_B drawn at `scale`."""
    from learner.config import LearnerConfig
    from learner.export import export_lora
    from learner.policy import build_policy

    model = build_policy(model_dir, LearnerConfig.model_validate({"adapter": kind, "mlae": {"rank": 4}}))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and scale:
                param.copy_(scale * torch.randn(param.shape, generator=gen))
    export_lora(model.eval(), version=1).save(out)


def test_zero_adapter_is_the_base_and_a_perturbed_one_is_not(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, tiny_model_dir, {"val": 2})
    _adapter(tiny_model_dir, run / "adapter", "lora", scale=0.0)
    zero = kl_from_base(run, images=1, samples=2)
    assert zero["completions"] == 2 and zero["images"] == 1 and zero["temperature"] == 1.0
    assert abs(zero["kl_nats_per_completion"]) <= 1e-6 and abs(zero["kl_nats_per_token"]) <= 1e-6

    shutil.rmtree(run / "adapter")
    _adapter(tiny_model_dir, run / "adapter", "lora", scale=0.5)
    moved = kl_from_base(run, images=1, samples=2)
    assert moved["kl_nats_per_completion"] > 1e-3 and moved["kl_nats_per_token"] > 0
    assert moved["kl_nats_per_completion_se"] > 0  # two different draws, two different sums
    step = run / "checkpoints" / "step-3"
    shutil.copytree(run / "adapter", step / "adapter")
    (step / "COMPLETE").write_text("3\n")
    # the same adapter read from a checkpoint, drawn again with the same seed: the same estimate
    assert kl_from_base(run, step=3, images=1, samples=2) == moved


def test_an_mlae_run_is_scored_through_its_exported_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, tiny_model_dir, {"val": 1})
    _adapter(tiny_model_dir, run / "adapter", "mlae", scale=0.5)
    got = kl_from_base(run, images=5, samples=1)
    assert got["images"] == 1 and got["completions"] == 1 and got["kl_nats_per_completion"] > 1e-3


def test_bad_inputs_name_the_path_or_split(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no resolved_config\.json"):
        kl_from_base(tmp_path / "nowhere")
    run = _run(tmp_path, tiny_model_dir, {"train": 2})
    with pytest.raises(ValueError, match="train first"):
        kl_from_base(run)
    with pytest.raises(ValueError, match=r"step-7.*no exported adapter"):
        kl_from_base(run, step=7)
    _adapter(tiny_model_dir, run / "adapter", "lora", scale=0.0)
    with pytest.raises(ValueError, match=r"split 'val' .* no grounding record"):
        kl_from_base(run)  # the demo's eval split; this data has train images only
    with pytest.raises(ValueError, match=r"split 'test' .* no grounding record"):
        kl_from_base(run, split="test")
    with pytest.raises(ValueError, match="samples >= 1"):
        kl_from_base(run, samples=0)


def _model_stub(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_eval_with_kl_samples_adds_kl_from_base_to_the_eval_json(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    import services.cluster.rollout_pool as rollout_pool
    import services.evaluation.kl as kl_module
    import services.evaluation.run as run_module
    from learner.export import LoraArtefact
    from services.evaluation import heldout

    run = _run(tmp_path, _model_stub(tmp_path), {"val": 3})
    LoraArtefact(1, {"m.lora_A.weight": torch.zeros(1, 2), "m.lora_B.weight": torch.zeros(2, 1)},
                 {"peft_type": "LORA"}).save(run / "adapter")

    class Pool:  # the greedy evaluation's pool: not what this test is about
        def __init__(self, *_: object, **__: object) -> None: ...
        def load_adapter(self, *_: object) -> None: ...
        def wait_ready(self) -> None: ...
        def shutdown(self) -> None: ...

    def evaluate(_pool: object, _manifest: object, _records: object, _cfg: object,
                 path: Path) -> tuple[dict[str, float], list[object]]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return {"eval/A@0.5": 50.0}, []

    calls: list[tuple[Path, dict[str, object]]] = []

    def fake_kl(run_dir: Path, **kwargs: object) -> dict[str, float]:
        calls.append((run_dir, kwargs))
        return {"kl_nats_per_completion": 0.25}

    monkeypatch.setattr(rollout_pool, "RolloutPool", Pool)
    monkeypatch.setattr(run_module, "init_ray", lambda _: None)
    monkeypatch.setattr(ray, "put", lambda obj: obj)
    monkeypatch.setattr(heldout, "evaluate", evaluate)
    monkeypatch.setattr(kl_module, "kl_from_base", fake_kl)
    metrics, path = run_module.evaluate_run(run, None, 2, None, 3)
    # the KL reads the split the evaluation read (the run's eval split here)
    assert calls == [(run, {"step": None, "images": 2, "samples": 3, "seed": 0, "split": "val"})]
    written = json.loads(path.with_suffix(".json").read_text())
    assert written["kl_from_base"] == metrics["kl_from_base"] == {"kl_nats_per_completion": 0.25}
    metrics, _ = run_module.evaluate_run(run, None, 2, None)
    assert "kl_from_base" not in metrics and len(calls) == 1  # K = 0: not computed


def test_cli_eval_passes_kl_samples_and_prints_the_kl(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import services.evaluation.run as run_module
    import services.training.trackers as trackers
    from services.cli import app

    run = _run(tmp_path, _model_stub(tmp_path), {"val": 1})
    seen: list[int] = []

    def fake_eval(run_dir: Path, _step: object, _max: object, _address: object,
                  kl_samples: int) -> tuple[dict[str, object], Path]:
        seen.append(kl_samples)
        path = run_dir / "eval" / "cli-final.jsonl"
        return {"records": 1, "kl_from_base": {"kl_nats_per_token": 0.125}}, path

    class Hub:
        def close(self, _: object) -> None: ...

    monkeypatch.setattr(run_module, "evaluate_run", fake_eval)
    monkeypatch.setattr(trackers, "attach", lambda _: Hub())
    monkeypatch.setattr(trackers, "log_evaluation", lambda *_: None)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(run), "--kl-samples", "2"])
    assert result.exit_code == 0, result.output
    assert seen == [2] and "kl_from_base/kl_nats_per_token" in result.output and "0.125" in result.output
    bad = runner.invoke(app, ["eval", str(run), "--kl-samples", "-1"])
    assert bad.exit_code == 1 and "--kl-samples -1 is negative" in bad.stderr and seen == [2]
