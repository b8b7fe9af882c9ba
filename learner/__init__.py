"""learner: optimisation of the adapter on a frozen Qwen-VL (GRPO and SFT), one DeepSpeed rank per process.

grpo.py (the GRPO maths as pure torch functions: advantages, sampling-distribution log-probs, clipped
surrogate, GSPO's sequence surrogate, k3 KL, aggregation; docs/algorithms.md), correction.py (the
rollout-vs-learner correction, TIS/MIS, and its statistics), batch.py (TrainSample, TrainBatch, SamplingSpec,
StepMetrics, collation into Collated tensors, micro-batches and the even split), packing.py (the shared-prefix
batches: each prompt once with its completions, the step's vision features), config.py (LearnerConfig,
GRPOConfig, MLAEConfig), mlae_masks.py (pure expert masks), mlae.py (MLAE as a PEFT LoRA layer),
policy.py (the base model plus its adapter), adapter_copies.py (the KL reference and earlier versions as
adapter copies), engine.py (LearnerEngine: the DeepSpeed rank that runs a step), checkpoint.py (its
checkpoint I/O), export.py (the adapter in LoRA form: LoraArtefact), expert_similarity.py (MLAE's expert
diversity measure), worker.py (the Ray actor; the only file that imports ray).

Nothing is re-exported: import from the modules (most need torch; worker.py needs ray).
"""
