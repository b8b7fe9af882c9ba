"""The fault bench (`python -m bench.faults`, `make bench-faults`) and what it shares with the fault tests.

- __main__.py: the bench: every fault's row, bench/results/faults.json.
- actors.py: faults inside one driver's Ray session (a rollout worker hung, an adapter refused, the reward
  actor hung, a learner rank killed).
- processes.py: faults of whole processes (a node lost, the `medground train` driver killed and resumed).
- rows.py: a fault's row, how lost requests are counted, the table.
- helpers.py: watch a process (busy, gone), find and end a throwaway Ray's processes by an environment
  marker and ancestry, and the small run (TREE, compared on KEYS) whose driver is killed and resumed.
- cluster.py: a throwaway head on loopback and a second node (`ray start`), stopped without `ray stop`.
- inputs.py: a non-zero LoRA adapter, its artefact, test images, rollout requests, reward batches.

helpers.py, cluster.py and inputs.py are imported by tests/integration too: one copy of each.
"""
