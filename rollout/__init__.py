"""rollout: generation. Requests in (an image and a phrase, never ground truth), groups of G completions out.

config.py (RolloutConfig, SamplingConfig), contracts.py (RolloutRequest, RolloutGroup, Completion),
images.py (image loading, the model families and the ImageFrame of what the model sees), knowledge.py
(VRFT-Aug prior knowledge from YAML), prompts.py (the prompt of a request, knowledge injected),
processing.py (the HF processor: chat text, prompt ids, image inputs), engines.py (the engine Protocol,
adapter specs, vision and stop tokens), engine_vllm.py (the product's engine), vllm_cpu_lora.py (vLLM's CPU
LoRA ops grouped by adapter, a vLLM plugin), engine_hf.py (transformers generate, the reference), core.py
(RolloutWorkerCore: the worker as a plain class), worker.py (its Ray actor; the only file that imports ray).

Only pure names are re-exported; engines, the worker core and the Ray actor are imported from their
modules (`rollout.core.RolloutWorkerCore`, `rollout.worker.RolloutWorker`).
"""

from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import Completion, RolloutGroup, RolloutRequest
from rollout.engines import AdapterSpec
from rollout.images import ImageFrame
from rollout.knowledge import KnowledgeBase, load_knowledge
from rollout.prompts import Prompt, build_prompt

__all__ = [
    "AdapterSpec", "Completion", "ImageFrame", "KnowledgeBase", "Prompt", "RolloutConfig",
    "RolloutGroup", "RolloutRequest", "SamplingConfig", "build_prompt", "load_knowledge",
]
