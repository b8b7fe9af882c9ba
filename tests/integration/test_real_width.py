"""The whole pipeline at real width (`make test-slow`): the Qwen2.5-VL-3B shape (hidden 2048, 16 heads of
128, 2 KV heads, MLP 11008, vocab 151,936, the real Qwen tokenizer) cut to 2 text layers and 2 vision
blocks (~0.54 B parameters, fp32) runs through the product path on CPU:

- the driver (services.training.train_loop) on a local Ray: a vLLM rollout worker with LoRA enabled at rank
64;
  the DeepSpeed learner (ZeRO-2) with MLAE rank 64 on every attention and MLP projection; one SFT step
  whose adapter is exported (plain LoRA on the real module names) and hot-loaded into the rollout worker
  (v1, which samples the GRPO groups), then one GRPO step whose adapter (v2) samples the final evaluation;
- the Ray Serve app on the run directory: it hot-loads the run's checkpoint adapter and answers one
  request over HTTP, with the box in the uploaded image's pixels.

Width-specific faults (head size 128, grouped KV heads, the 151,936-row vocabulary, LoRA module names and
ranks vLLM accepts for the real layout) show here and not with the tiny models.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from serve_fixtures import png_bytes

from learner.distributed import free_port
from rollout.images import FAMILIES
from services.config import RunConfig
from services.training.metrics import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RANK = 64
HIDDEN, KV, MLP = 2048, 2 * 128, 11008


@pytest.fixture(scope="module")
def model_3b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.models.tiny import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("models") / "qwen2_5_vl_3b-2l", shape="qwen2_5_vl_3b",
                           layers=2, vision_layers=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.data.synth import make_spec, write_dataset

    spec = make_spec("demo", splits={"train": 4, "val": 1, "test": 0})
    return write_dataset(spec, tmp_path_factory.mktemp("data"), seed=0, manifest_name="manifest.jsonl")


def _config(model: Path, manifest: Path, out: Path) -> RunConfig:
    tree: dict[str, Any] = {
        "name": "real-width", "seed": 0, "output_dir": str(out),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        # drop_zero_variance off: a random model's two answers usually score alike, and the GRPO step must run
        "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 2, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 1, "prompts_per_step": 1, "refill_cap": 0,
                    "drop_zero_variance": False}],
        "pool": {"num_workers": 1, "cpus_per_worker": 1},
        "rollout": {"group_size": 2, "max_model_len": 1024,
                    "max_lora_rank": RANK, "sampling": {"temperature": 1.0, "max_new_tokens": 16}},
        "learner": {"num_ranks": 1, "cpus_per_rank": 1, "torch_threads": 2, "micro_batch_size": 2,
                    "zero_stage": 2, "lr": 1e-3,
                    "mlae": {"rank": RANK, "target_modules": list(FAMILIES["qwen2_5_vl"].lora_modules)}},
        "reward": {"accuracy": "raw_iou"},
        "eval": {"every": 0, "at_start": False, "max_samples": 1, "overlays": 0},
        "checkpoint": {"every": 0, "keep": 1},
    }
    return RunConfig.model_validate(tree)


def test_3b_shape_trains_exports_hot_loads_and_serves(ray_local: None, model_3b: Path, data: Path,
                                                      tmp_path: Path) -> None:
    import ray
    from ray import serve
    from safetensors import safe_open

    from services.serve.app import GroundingDeployment
    from services.training import train_loop

    text = json.loads((model_3b / "config.json").read_text())["text_config"]
    assert (text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"],
            text["intermediate_size"], text["vocab_size"]) == (HIDDEN, 16, 2, MLP, 151936)

    rows: list[dict[str, Any]] = []
    run_dir = train_loop.run(_config(model_3b, data, tmp_path), on_step=lambda s, r: rows.append(r))

    sft, grpo = rows
    assert sft["stage"] == "warmup" and sft["learner/loss"] > 0 and sft["learner/skipped"] == 0
    assert grpo["stage"] == "grounding" and grpo["learner/skipped"] == 0
    # the SFT stage's adapter went out as v1 and sampled the GRPO groups (a hot-load into vLLM); the GRPO
    # step's adapter went out as v2 and sampled the final evaluation
    assert (sft["adapter_version"] == 1
            and grpo["batch/adapter_version_min"] == grpo["batch/adapter_version_max"] == 1)
    assert grpo["adapter_version"] == 2
    final_eval = read_metrics(run_dir / "metrics.jsonl")[-1]
    assert "eval/A@0.5" in final_eval

    # The exported adapter: plain LoRA, rank 64, every language-model projection under its real name.
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == RANK and config["peft_type"] == "LORA"
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as st:
        shapes = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118
    layer0 = "base_model.model.model.language_model.layers.0."
    expected = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, KV),
                "self_attn.v_proj": (HIDDEN, KV), "self_attn.o_proj": (HIDDEN, HIDDEN),
                "mlp.gate_proj": (HIDDEN, MLP), "mlp.up_proj": (HIDDEN, MLP), "mlp.down_proj": (MLP, HIDDEN)}
    for module, (fan_in, fan_out) in expected.items():
        assert shapes[f"{layer0}{module}.lora_A.weight"] == (RANK, fan_in)
        assert shapes[f"{layer0}{module}.lora_B.weight"] == (fan_out, RANK)
    assert len(shapes) == 2 * 7 * 2 and not any("visual" in k for k in shapes)

    # One request through Ray Serve, which hot-loads the run's checkpoint adapter into its vLLM engine.
    tmp = Path(tempfile.mkdtemp(prefix="mgw-", dir="/tmp"))
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = GroundingDeployment.options(
            ray_actor_options={"num_cpus": 1},
            user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "watch_interval_s": 0.0})
        serve.run(deployment.bind({"run_dir": str(run_dir), "max_new_tokens": 24}), name="real-width",
                  route_prefix="/")
        import requests

        response = requests.post(f"http://127.0.0.1:{port}/v1/ground", timeout=300,
                                 files={"image": ("scan.png", png_bytes((300, 170)), "image/png")},
                                 data={"phrase": "left upper lobe nodule"})
        info = requests.get(f"http://127.0.0.1:{port}/v1/model", timeout=60).json()
    finally:
        if ray.is_initialized():
            serve.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["adapter_version"] == 2 and info["adapter"]["version"] == 2
            and info["adapter"]["origin"] == "start")
    assert (body["image"]["width"], body["image"]["height"]) == (300, 170)
    width, height = body["model_input"]["width"], body["model_input"]["height"]
    assert width % 28 == 0 and height % 28 == 0 and body["text"] is not None
