"""Learner checkpoints: DeepSpeed state of every rank, RNG states, the adapter copies, and the adapter.

Everything goes to ``<directory>.tmp`` first, is fsynced, and is renamed when complete (learner/durable.py),
so a crash leaves either the previous checkpoint or the new one, never half of one. All ranks call; the
directory must be on storage
every rank sees. The adapter is written once, by rank 0, under the version number the driver gave it:
the same number rollout workers and Serve know it by.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from learner import durable

if TYPE_CHECKING:
    from learner.engine import LearnerEngine

STATE_FILE = "learner_state.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine: LearnerEngine, directory: Path, adapter_dir: Path | None, version: int) -> Path:
    """Write ``engine``'s state to ``directory`` atomically; rank 0 also writes the adapter, as ``version``,
    to ``adapter_dir`` when given (the driver's ``step-N/adapter``)."""
    from learner.export import export_lora

    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if engine.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.barrier()
    engine.ds_engine.save_checkpoint(str(tmp), tag="deepspeed", client_state={"steps": engine.steps},
                                     exclude_frozen_parameters=True)
    torch.save(rng_state(), tmp / f"rng_rank{engine.rank}.pt")
    # This rank's copies of the KL reference and the kept versions (ZeRO-3: its partitions), so a resumed
    # run takes the same KL and off-policy ratios as the uninterrupted one.
    torch.save(engine.copies.state_dict(), tmp / f"adapter_copies_rank{engine.rank}.pt")
    artefact = export_lora(engine.model, version) if adapter_dir is not None else None  # ZeRO-3: all ranks
    engine.barrier()  # every rank's files are in tmp before rank 0 renames it
    if engine.rank == 0:
        if artefact is not None and adapter_dir is not None:
            artefact.save(adapter_dir)
        (tmp / STATE_FILE).write_text(json.dumps(
            {"steps": engine.steps, "world_size": engine.world_size, "adapter": engine.cfg.adapter,
             "adapter_version": version}) + "\n")
        durable.replace_dir(tmp, final)
    engine.barrier()
    return final


def load(engine: LearnerEngine, directory: Path) -> None:
    """Restore a checkpoint written by ``save`` with the same number of ranks."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    if state["world_size"] != engine.world_size:
        raise ValueError(f"checkpoint {directory} was written by {state['world_size']} learner ranks; "
                         f"resume with learner.num_ranks={state['world_size']} (ZeRO partitions differ)")
    path, client = engine.ds_engine.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}/deepspeed")
    engine.steps = int(client["steps"])
    set_rng_state(torch.load(directory / f"rng_rank{engine.rank}.pt", weights_only=False))
    engine.copies.load_state_dict(torch.load(directory / f"adapter_copies_rank{engine.rank}.pt",
                                             weights_only=True))
