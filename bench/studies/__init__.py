"""Studies: the papers' claims in miniature, as arms x seeds of real training runs (`docs/RESULTS.md`).

- arms.py: the pure half: what an arm and a study are, each run's config tree, a finished run's metrics as
  a table row (mean and spread over seeds), paired changes pooled over seeds, the re-run comparison.
- runner.py: the running half: one private Ray session and one shared rollout pool for a study's runs,
  warm starts cached by config hash, equal-time calibration, JSON + Markdown + plots in bench/results/.
- plots.py: a study's plots (tau and zero-variance paths, size buckets, learning curves).
- medloc_ablation.py, medloc_sparse.py, mlae_vs_lora.py, objectives.py, vrft_aug.py, multibox.py: the studies
  (`python -m bench.studies.<name>`, the `make bench-medloc*`, `bench-mlae-lora`, `bench-objectives`,
  `bench-vrft` and `bench-multibox` targets).
- check.py: a fresh study result against the committed one (`python -m bench.studies.check OLD NEW`).
- compare_runs.py: two finished runs on the same held-out images, side by side.
"""
