"""Studies: the papers' claims in miniature, as arms x seeds of real training runs (`docs/RESULTS.md`).

- arms.py: the pure half: what an arm and a study are, each run's config tree, a finished run's metrics as
  a table row (mean and spread over seeds), paired changes pooled over seeds, the re-run comparison.
- runner.py: the running half: one private Ray session and one shared rollout pool for a study's runs,
  warm starts cached by config hash, equal-time calibration, JSON + Markdown + plots in bench/results/.
- medloc_ablation.py, mlae_vs_lora.py, vrft_aug.py: the studies (`python -m bench.studies.<name>`, the
  `make bench-medloc*`, `bench-mlae-lora` and `bench-vrft` targets).
- check.py: a fresh study result against the committed one (`python -m bench.studies.check OLD NEW`).
- compare_runs.py: two finished runs on the same held-out images, side by side.
"""
