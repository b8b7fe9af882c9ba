"""MLAE under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU ranks (gloo): trains, and rank 0's export is complete
and equals the trained model (base + exported LoRA logits within 1e-5, fp32)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from learner.distributed import free_port

pytestmark = pytest.mark.integration

WORLD = 2
STEPS = 3


def _probe_ids() -> torch.Tensor:
    return torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(99))  # [2, 16]


def _rank(rank: int, port: int, stage: int, model_dir: str, out_dir: str) -> None:
    """One DeepSpeed rank: 3 MLAE steps on a toy LM loss, export on every rank, rank 0 writes the results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_SIZE=str(WORLD), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText

    from learner.config import MLAEConfig
    from learner.distributed import init_distributed
    from learner.export import export_lora
    from learner.mlae import apply_mlae

    # the learner's own join: gloo without DeepSpeed's shared-memory op, which a fresh environment would
    # first compile (~85 s of a fresh clone's make test)
    init_distributed(rank, WORLD, "gloo")
    torch.manual_seed(0)  # same adapter init and the same mask draws on every rank
    model = apply_mlae(AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
                       MLAEConfig(p=0.5, mask="mixed", fixed_p=0.25))
    params = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "steps_per_print": 1000}
    engine, *_ = deepspeed.initialize(model=model,
                                      optimizer=torch.optim.AdamW(params, lr=5e-2), config=config)
    data = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        ids = torch.randint(0, 500, (2, 16), generator=data)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()

    artefact = export_lora(engine.module, version=STEPS)  # collective under ZeRO-3
    engine.module.eval()
    with torch.no_grad():
        logits = engine.module(input_ids=_probe_ids()).logits  # collective forward under ZeRO-3
    if rank == 0:
        artefact.save(Path(out_dir) / "adapter")
        torch.save(logits, Path(out_dir) / "logits.pt")
    dist.barrier()
    dist.destroy_process_group()


# ZeRO-3 (parameters partitioned: the export must gather them) in make test; ZeRO-2, whose parameters every
# rank holds whole, trains in the default tier's 2-rank runs (test_learner.py, test_train_loop_e2e.py)
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_zero_ranks_train_mlae_and_rank0_exports_a_complete_equal_adapter(
        tiny_model_dir: Path, tmp_path: Path, stage: int) -> None:
    import torch.multiprocessing as mp
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from learner.export import LoraArtefact

    mp.start_processes(_rank, args=(free_port(), stage, str(tiny_model_dir), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="spawn")

    artefact = LoraArtefact.load(tmp_path / "adapter")
    assert artefact.version == STEPS
    assert len(artefact.tensors) == 2 * 4 * 2  # 2 layers x q, k, v, o x (A, B): nothing missing
    for key, t in artefact.tensors.items():
        rows, cols = t.shape
        assert (rows if key.endswith("lora_A.weight") else cols) == 8  # full rank: not a ZeRO-3 shard
        assert torch.isfinite(t).all()
    # trained
    assert any(t.abs().max() > 0 for k, t in artefact.tensors.items() if k.endswith("lora_B.weight"))

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        lora_logits = lora(input_ids=_probe_ids()).logits
        with lora.disable_adapter():
            base_logits = lora(input_ids=_probe_ids()).logits
    trained_logits = torch.load(tmp_path / "logits.pt")
    assert (trained_logits - lora_logits).abs().max().item() <= 1e-5
    assert (trained_logits - base_logits).abs().max().item() > 1e-3
