"""Configuration of the grounding service: what to load (args, fixed for a replica's life) and how to batch
and watch (user config, applied live by Ray Serve's `reconfigure`).

`ServeArgs` is what deploy/serve/serve_config.yaml passes as `args:` to `services.serve.app:build_app`;
`ServeUserConfig` is the deployment's `user_config:`. Both are strict: an unknown key is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.config import RolloutConfig
from services.config import load_run_config


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Strict):
    """What one request may carry; anything beyond is a 4xx that names the limit and the fix."""

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest image upload in bytes "
                                  "(the decoded file, before base64); larger requests get 413.")
    max_image_pixels: int = Field(40_000_000, ge=28 * 28,
                                  description="Largest width x height accepted, read from "
                                  "the header before decoding (decompression-bomb guard); larger gets 413.")
    min_image_side: int = Field(8, ge=1, description="Smallest width or height in pixels.")
    max_aspect_ratio: float = Field(200.0, gt=1.0, le=200.0, description="Longest side / shortest side; the "
                                    "Qwen-VL resize refuses ratios above 200.")
    max_phrase_chars: int = Field(500, ge=1, description="Longest phrase, in characters after trimming.")
    preview_side: int = Field(1024, ge=64, description="Long side of the optional PNG preview returned for "
                              "the page (DICOM cannot be shown by browsers).")


class ServeArgs(_Strict):
    """Start-time arguments of a replica. Give `run_dir` (a training run: its resolved config supplies the
    model path and the rollout settings the run was evaluated with, and its checkpoints are watched for new
    adapters) or `model_path` (a bare HF model directory); both may be given to override the run's model."""

    run_dir: str | None = Field(None,
                                description="runs/<name>: model, rollout settings, watched checkpoints.")
    model_path: str | None = Field(None, description="HF model directory (overrides the run's model.path).")
    adapter_path: str | None = Field(None, description="PEFT LoRA adapter directory to load at start "
                                     "(default: the run's latest complete checkpoint adapter, if any).")
    engine: Literal["vllm", "hf"] | None = Field(None,
                                                 description="Override rollout.engine: vllm (the product) "
                                                 "or hf (transformers, the reference).")
    rollout: dict[str, Any] = Field(default_factory=dict, description="Overrides of rollout settings "
                                    "(e.g. max_lora_rank, kv_cache_gib); see rollout/config.py.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Answer length cap in tokens (greedy "
                                       "decoding); default: the run's rollout.sampling.max_new_tokens, as "
                                       "evaluation uses (64 without a run).")
    knowledge_dir: str | None = Field(None, description="Prior-knowledge folder for requests that name a "
                                                        "knowledge_key (default: the run's "
                                                        "data.knowledge_dir when injection is on).")
    multi_box: bool | None = Field(None, description="Ask for and read a list of boxes ([] when the finding "
                                   "is absent) instead of one box; default: true when any stage of the run "
                                   "has multi_box: true (as evaluation decides), false for a bare model.")
    token_env: str = Field("MEDGROUND_SERVE_TOKEN",
                           description="Environment variable holding the bearer token; "
                           "unset or empty: no authentication.")
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _has_model(self) -> ServeArgs:
        if self.run_dir is None and self.model_path is None:
            raise ValueError("give run_dir (a training run directory) or model_path (an HF model directory)")
        return self


class ServeUserConfig(_Strict):
    """Live settings of every replica (Ray Serve `user_config`; changing them needs no restart)."""

    max_batch_size: int = Field(8, ge=1, le=256, description="Requests batched into one engine call.")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=5.0, description="How long a batch waits to fill.")
    watch_interval_s: float = Field(10.0, ge=0.0,
                                    description="Seconds between polls of the run's checkpoints "
                                    "for a newer adapter; 0 turns watching off.")


class ResolvedModel(_Strict):
    """What a replica actually loads, after reading the run directory."""

    model_path: str
    rollout: RolloutConfig
    knowledge_dir: str | None
    run_dir: str | None


def resolve(args: ServeArgs) -> ResolvedModel:
    """Model path and rollout settings: the run's resolved config, then `args` overrides on top."""
    tree: dict[str, Any] = {}
    model_path = args.model_path
    knowledge_dir = args.knowledge_dir
    if args.run_dir is not None:
        run = load_run_config(args.run_dir)
        tree = run.rollout.model_dump()
        model_path = model_path or run.model.path
        if knowledge_dir is None and run.rollout.inject_knowledge:
            knowledge_dir = run.data.knowledge_dir
    tree.update(args.rollout)
    if args.engine is not None:
        tree["engine"] = args.engine
    assert model_path is not None  # ServeArgs guarantees run_dir or model_path
    if not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"model {model_path} has no config.json; point model_path (or the run's "
                                f"model.path) at an HF model directory (`medground init-model` makes one)")
    return ResolvedModel(model_path=str(model_path), rollout=RolloutConfig.model_validate(tree),
                         knowledge_dir=knowledge_dir, run_dir=args.run_dir)
