"""services: the composition root, the only package that imports rewards, rollout and learner.

The run: config.py (RunConfig, the whole typed tree; --set overrides), launch.py (Ray start-up, train,
demo, evaluate a run; CPU_ENV), train_loop.py (the driver: a GRPO step as named phases, the stage loop),
seams.py (the driver's Protocols), handles.py (the Ray-backed handles a run starts), convert.py (contract
to contract: record -> request, target, samples), sampler.py (seeded prompt order), checkpointing.py (run
checkpoints on disk), metrics.py (metrics.jsonl, TensorBoard, plots, PhaseTimer), evaluation.py and
eval_metrics.py (held-out prediction and its pure metrics).
The cluster: rollout_pool.py (N rollout workers, elastic), learner_group.py (M DeepSpeed ranks),
reward_client.py (the reward actor, recreated after a crash), control.py (the named control actor and
JobStatus).
Operating and tools: cli.py (`medground ...`), ops.py (status, scale, submit against a cluster),
merge.py (a merged export), tiny_model.py, model_shapes.py and qwen_tokenizer.py (random models of the
real families and shapes, offline tokenizers).
Subpackages: data/ (records, manifests, image readers, converters, synthetic data; docs/images.md) and
serve/ (the Ray Serve app).
"""
