"""rollout: prompts with prior knowledge, image frames, engines (vLLM, transformers) and the worker actor.

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
