"""Start-up hook for CPU environments: lets PyPI's CUDA-linked torchvision import beside CPU torch.

Installed by `make setup` as a `.pth` line into the virtual environment's site-packages, because vLLM
imports torchvision in subprocesses that never import medground. It costs nothing at start-up: it only
registers an import hook, and does its work the first time `torchvision` is imported.

torchvision's Python code registers fake kernels for `torchvision::nms` and `torchvision::qnms`, which
fail when its compiled library (linked against CUDA torch) cannot load. Defining the two operator
schemas first is enough for the pure-Python parts that the Qwen-VL image processors use. On a CUDA torch,
or when torchvision's own library already defined them, the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARIES: list[Any] = []  # keep torch.library.Library objects alive for the life of the process


def _define_schemas() -> None:
    import torch

    if torch.version.cuda is not None or torch.version.hip is not None:
        return  # a GPU build of torch loads torchvision's real library
    missing = [name for name in _SCHEMAS if not _op_exists(torch, name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _LIBRARIES.append(lib)


def _op_exists(torch: Any, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_schemas()
        return None  # let the normal finders load torchvision


def install() -> None:
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
