"""Ray for a local run or a cluster: the one CPU process environment and `init_ray`.

`ray job submit` runs `medground train CONFIG` on the cluster's head; there Ray is already up (RAY_ADDRESS is
set by the job), so `ray.init()` joins it. Locally, an embedded Ray is started with the machine's CPUs and the
environment CPU engines need; the caller that started it shuts it down.
"""

from __future__ import annotations

import os

# The one CPU environment: what every process of a local run needs (the driver and each Ray worker); tests
# and benchmarks import it, deploy/jobs/runtime_env_cpu.yaml sets the same on a cluster. The vLLM KV cache
# is not here: the engine sets it from rollout.kv_cache_gib (docs/environment.md).
CPU_ENV = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray; True when this call started
    one (the caller then owns its shutdown)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None and "RAY_ADDRESS" not in os.environ:
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(include_dashboard=False, runtime_env={"env_vars": CPU_ENV},
                 log_to_driver=os.environ.get("MEDGROUND_RAY_LOGS", "0") == "1")
        return True
    ray.init(address=address or os.environ.get("RAY_ADDRESS"))
    return False
