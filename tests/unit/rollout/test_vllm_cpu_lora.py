"""The grouped CPU LoRA ops (rollout/vllm_cpu_lora.py) against vLLM's own reference ops: the same outputs on
one adapter slot, mixed slots, slot -1, vLLM's 4-D weight stacks, added or written outputs, a slice of a
merged projection, and no tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rollout import vllm_cpu_lora

SLOTS, HIDDEN, RANK, OUT = 3, 48, 8, 40


def reference(name: str) -> Any:
    from vllm.lora.ops.torch_ops import lora_ops

    op = vllm_cpu_lora.REFERENCE.get(name, getattr(lora_ops, name))
    assert op is not vllm_cpu_lora.OPS[name]
    return op


def _indices(kind: str, tokens: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return {"one": torch.full((tokens,), 1),
            "mixed": torch.randint(0, SLOTS, (tokens,), generator=g),
            "none": torch.full((tokens,), -1),
            "with_none": torch.randint(-1, SLOTS, (tokens,), generator=g)}[kind]


def _both(name: str, output: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    want, got = output.clone(), output.clone()
    reference(name)(args[0], args[1], want, *args[2:])
    vllm_cpu_lora.OPS[name](args[0], args[1], got, *args[2:])
    return want, got


@pytest.mark.parametrize("kind", ["one", "mixed", "none", "with_none"])
@pytest.mark.parametrize("stack", [3, 4])
@pytest.mark.parametrize("tokens", [1, 37])
def test_shrink_equals_vllms_reference(kind: str, stack: int, tokens: int) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, RANK, HIDDEN, generator=g)
    a = a.unsqueeze(1) if stack == 4 else a
    x = torch.randn(tokens, HIDDEN, generator=g)
    want, got = _both("bgmv_shrink", torch.zeros(tokens, RANK), x, a, _indices(kind, tokens), 0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.abs().sum() > 0


@pytest.mark.parametrize("kind", ["one", "mixed", "with_none"])
@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("out_width", [OUT, OUT + 8, OUT - 8])  # the adapter or the layer padded wider
def test_expand_equals_vllms_reference(kind: str, add: bool, out_width: int) -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=g)
    x = torch.randn(21, RANK, generator=g)
    base = torch.randn(21, out_width, generator=g)
    want, got = _both("bgmv_expand", base, x, b, _indices(kind, 21), add)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, base)


@pytest.mark.parametrize("kind", ["one", "mixed"])
@pytest.mark.parametrize("add", [True, False])
def test_expand_slice_equals_vllms_reference(kind: str, add: bool) -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(SLOTS, OUT, RANK, generator=g)
    x = torch.randn(13, RANK, generator=g)
    base = torch.randn(13, 3 * OUT, generator=g)  # a merged q/k/v output, the slice in the middle
    want, got = _both("bgmv_expand_slice", base, x, b, _indices(kind, 13), OUT, OUT, add)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[:, :OUT], base[:, :OUT]) and torch.equal(got[:, 2 * OUT:], base[:, 2 * OUT:])


def test_the_sgmv_ops_of_vllm_run_the_grouped_ops_once_installed() -> None:
    """vLLM's prefill ops (sgmv_*) call bgmv_* by module lookup, and its CPU punica wrapper imported them by
    name: install() replaces both, and a second call changes nothing."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    vllm_cpu_lora.install()
    vllm_cpu_lora.install()
    for name, op in vllm_cpu_lora.OPS.items():
        assert getattr(lora_ops, name) is op and getattr(punica_cpu, name) is op
        assert vllm_cpu_lora.REFERENCE[name] is not op
    g = torch.Generator().manual_seed(0)
    a, x = torch.randn(SLOTS, RANK, HIDDEN, generator=g), torch.randn(10, HIDDEN, generator=g)
    seq_lens, slots = torch.tensor([4, 6]), torch.tensor([2, 0])
    got = torch.zeros(10, RANK)
    lora_ops.sgmv_shrink(x, a, got, torch.tensor([0, 4]), seq_lens, slots, 2, 6, 10, 1.0)
    torch.testing.assert_close(got, torch.cat([x[:4] @ a[2].T, x[4:] @ a[0].T]))


def _outcome(op: Any, output: torch.Tensor, *args: Any) -> Any:
    """The op's result on a copy of `output`, or the type of what it raised."""
    out = output.clone()
    try:
        op(args[0], args[1], out, *args[2:])
    except Exception as exc:  # the reference's einsum refuses mismatched shapes with RuntimeError
        return type(exc)
    return out


@pytest.mark.parametrize(("rows", "indices"), [
    (4, [1, 1]),        # fewer indices than rows: vLLM refuses
    (4, [0, 2]),
    (4, []),
    (1, [0, 1, 2]),     # one row, several indices: vLLM broadcasts the row
    (0, []),            # no rows
])
@pytest.mark.parametrize("name", ["bgmv_shrink", "bgmv_expand"])
def test_calls_outside_one_index_per_row_do_what_vllm_does(name: str, rows: int, indices: list[int]) -> None:
    """Such calls go to vLLM's own op: the same result, or the same refusal; never rows left unwritten."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(indices, dtype=torch.long)
    if name == "bgmv_shrink":
        args: tuple[Any, ...] = (torch.randn(rows, HIDDEN, generator=g), torch.randn(SLOTS, RANK, HIDDEN,
                                                                                    generator=g), ids, 1.0)
        output = torch.zeros(max(rows, len(indices)), RANK)
    else:
        args = (torch.randn(rows, RANK, generator=g), torch.randn(SLOTS, OUT, RANK, generator=g), ids, True)
        output = torch.zeros(max(rows, len(indices)), OUT)
    want = _outcome(reference(name), output, *args)
    got = _outcome(vllm_cpu_lora.OPS[name], output, *args)
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want)
    else:
        assert got is want


def test_one_product_row_is_added_to_every_output_row() -> None:
    """bgmv_expand's `limit` rule: one input row on one slot against an output of several rows adds the
    row to each of them, as vLLM's op does."""
    g = torch.Generator().manual_seed(0)
    b, x = torch.randn(SLOTS, OUT, RANK, generator=g), torch.randn(1, RANK, generator=g)
    base = torch.randn(5, OUT, generator=g)
    want, got = _both("bgmv_expand", base, x, b, torch.tensor([2]), True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got - base, (x @ b[2].T).expand(5, OUT))
