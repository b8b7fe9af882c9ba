"""Every vLLM engine the code or its tests build sizes its KV cache explicitly.

On CPU, vLLM without a KV-cache size asks for `gpu_memory_utilization` (0.92) of the machine's RAM and
refuses to start when other processes hold memory ("Available memory ... is less than desired CPU memory
utilization"): a test engine failed that way with 2 GB in use. So every `LLM(...)` / engine-args call must
pass `kv_cache_memory_bytes` (rollout/engine_vllm.py passes rollout.kv_cache_gib in bytes on CPU).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE_BUILDERS = {"LLM", "AsyncLLM", "AsyncLLMEngine", "LLMEngine", "EngineArgs", "AsyncEngineArgs"}


def _engine_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, passes kv_cache_memory_bytes) of every call to a vLLM engine builder in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func,
                                     ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in ENGINE_BUILDERS:
            out.append((node.lineno, any(k.arg == "kv_cache_memory_bytes" for k in node.keywords)))
    return out


def test_every_vllm_engine_sizes_its_kv_cache() -> None:
    files = [p for d in ("rollout", "services", "bench", "tests", "tools") for p in (ROOT / d).rglob("*.py")]
    calls = {f"{p.relative_to(ROOT)}:{line}": sized for p in files for line, sized in _engine_calls(p)}
    assert "rollout/engine_vllm.py" in " ".join(calls), "the guard no longer sees the rollout engine"
    assert [where for where, sized in calls.items() if not sized] == []
