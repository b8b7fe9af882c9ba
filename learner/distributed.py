"""The learner's process group: joining it (gloo on CPU, NCCL on GPU), the DeepSpeed config, and a free TCP
port (MASTER_PORT; tests and benches take theirs for Ray heads and Serve from here too)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from typing import Any

import torch.distributed as dist

from learner.config import LearnerConfig


def free_port() -> int:
    """An unused TCP port on this host in 20000-29999 (MASTER_PORT here; tests and benches use it for their
    own Ray heads and Serve): above Ray's worker ports (10002-19999) and below the kernel's ephemeral range,
    from which other clusters on a shared machine take their random ports."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
            s.bind(("", port))
            return port


def deepspeed_config(cfg: LearnerConfig, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg``; every value that matters is explicit."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        # DeepSpeed's default clip is 1.0 whatever the user meant: always state it.
        "gradient_clipping": cfg.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def init_distributed(rank: int, world_size: int, backend: str) -> bool:
    """Join (or create) the process group; returns True when this call created it."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                               f"already exists; this engine wants rank {rank} of {world_size}: close the "
                               "other engine")
        return False
    import deepspeed

    if world_size > 1 and "MASTER_PORT" not in os.environ:
        raise RuntimeError("several learner ranks need MASTER_ADDR/MASTER_PORT (LearnerGroup sets them)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if world_size == 1:  # a lone rank agrees with nobody: a fresh port avoids clashing with an earlier engine
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("LOCAL_RANK", "0")  # Ray gives each rank its own GPU, visible as device 0
    if backend == "gloo":  # see the module docstring: the op is unused in training and its lock can go stale
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               rank=rank, world_size=world_size)
    return True
