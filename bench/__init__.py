"""medground's second product: measurements of the first, in two parts.

- Benchmarks, one script per question (`python -m bench.<name>`, or `python -m bench NAME ...`), each writing
  bench/results/<name>.json with the machine recorded: learner.py, rollout.py, rewards.py, serve_load.py,
  shapes.py, sparsity.py, sparse_gate.py, step.py, mlae.py, vs_trl.py (with its turn-taking helper
  _turns.py), and faults/ (a package: the fault runs and the process, cluster and input helpers the fault
  tests share).
- studies/: the experiment framework (arms x seeds of training runs) and the paper studies run with it.
- machine.py: what both record the same way (the machine, result paths) and their private Ray.

Results: bench/results/ holds what these scripts write; bench/results/probes/ holds one-off runs and results
of earlier set-ups, each with the recipe that made it (its README.md).
"""
