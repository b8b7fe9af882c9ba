"""Benchmarks: one script per question, `python -m bench.<name>`; results in bench/results/<name>.json."""
