"""services: the composition root, the only package that imports rewards, rollout and learner.

One subpackage per job, each a floor that imports only the floors below it (pyproject.toml's layers
contract; docs/architecture.md):
- cli/: `medground ...` (main.py; data.py for `medground data`; ops.py: status, scale, submit on a cluster).
- serve/: the Ray Serve app, its HTTP layer and page.
- training/: the driver: train_loop.py (the run, one step of each kind), producer.py (the GRPO batch source),
  run_state.py (state, checkpoints, failure text), seams.py (Protocols, RunHandles), handles.py (the
  Ray-backed handles), sampler.py, metrics.py (metrics.jsonl, plots, the step's row), trackers.py
  (TensorBoard, MLflow in tracker_mlflow.py, W&B in tracker_wandb.py), samples.py (training completions
  as JSONL), launch.py (`medground train`), demo.py (`make demo`).
- models/: tiny.py, shapes.py, qwen_tokenizer.py, pretrain.py (the CPU bases), merge.py (merged export).
- evaluation/: heldout.py (prediction, report, files, overlays), metrics.py (pure metrics), run.py
  (`medground eval`).
- cluster/: rollout_pool.py, learner_group.py, reward_client.py, control.py (JobStatus), fault_log.py,
  startup.py (Ray start-up, CPU_ENV).
- targets.py (SFT reference answers and thinks); convert.py (contract to contract: record -> request,
  target, samples); checkpointing.py (run checkpoints on disk, a run's adapter); config.py (RunConfig, the
  whole typed tree; --set overrides; moved keys); logging_config.py (its `logging:` section).
- data/: records, manifests, image readers, converters, synthetic data (docs/images.md).
"""
