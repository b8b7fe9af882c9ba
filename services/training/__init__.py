"""The training driver: train_loop.py (the run and one step of each kind, in the order of the README
diagram), producer.py (the GRPO batch source: prompts -> completions -> rewards -> kept groups; overlapped
generation), run_state.py (driver state, checkpoint, restore, status, failure text), seams.py (the
Protocols the driver needs and RunHandles), handles.py (the Ray-backed handles a run starts), sampler.py
(seeded prompt order), metrics.py (metrics.jsonl, plots, the step's metric row), trackers.py (the Tracker
Protocol, TensorBoard, delivery to MLflow and W&B: tracker_mlflow.py, tracker_wandb.py), samples.py
(`samples/train-step-N.jsonl`), launch.py (`medground train`: Ray, signals, inputs), demo.py (`make demo`)."""
