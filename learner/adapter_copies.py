"""Frozen copies of the adapter: the KL reference and the versions rollout workers sample with.

GRPO needs the policy a stage started from (the KL reference) and, for off-policy ratios, the policy that
sampled a batch (an earlier exported version). Both are the same base with other adapter values, so they
are kept as copies of the adapter's parameters only -- a second adapter slot, not a second model -- and
swapped in for a no-grad forward (docs/algorithms.md, "GRPO"). Under DeepSpeed ZeRO-3 a parameter's values
live in its partition (``ds_tensor``); each rank copies and swaps its own partition.

Pure torch, no DeepSpeed import: tests build it over any list of parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


class StaleBatchError(RuntimeError):
    """A batch was sampled by an adapter version the learner no longer keeps."""


class AdapterCopies:
    """The reference copy and the last ``keep`` exported versions of ``params``, by version number.

    Version 0 is the adapter as built (B = 0, so it equals the base model); ``live_version`` is the version
    the parameters currently hold, None once an optimiser step moved them past every exported version.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.params, self.keep = list(params), keep
        self.reference: list[torch.Tensor] | None = None
        self.versions: OrderedDict[int, list[torch.Tensor]] = OrderedDict({0: self.copy()})
        self.live_version: int | None = 0

    def _storages(self) -> list[torch.Tensor]:
        return [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in self.params]

    def copy(self) -> list[torch.Tensor]:
        """A detached copy of the current values (this rank's partitions under ZeRO-3)."""
        with torch.no_grad():
            return [t.detach().clone() for t in self._storages()]

    def mark_exported(self, version: int) -> None:
        """The current values are adapter ``version``: keep a copy (the oldest beyond ``keep`` is dropped)."""
        if self.live_version == version:
            return
        self.versions[version] = self.copy()
        while len(self.versions) > self.keep:
            self.versions.popitem(last=False)
        self.live_version = version

    def mark_moved(self) -> None:
        """An optimiser step changed the values: they are no exported version any more."""
        self.live_version = None

    def set_reference(self) -> None:
        """The current values become the KL reference (a GRPO stage begins)."""
        self.reference = self.copy()

    @contextmanager
    def swapped_in(self, values: list[torch.Tensor]) -> Iterator[None]:
        """The parameters temporarily hold ``values`` (for no-grad forwards); restored on exit."""
        with torch.no_grad():
            live = self.copy()
            self._write(values)
            try:
                yield
            finally:
                self._write(live)

    def _write(self, values: list[torch.Tensor]) -> None:
        for p, storage, v in zip(self.params, self._storages(), values, strict=True):
            storage.copy_(v)
            if hasattr(p, "ds_tensor") and p.data.numel() == v.numel():  # a ZeRO-3 persistent parameter
                p.data.copy_(v.view_as(p.data))

    @contextmanager
    def as_version(self, version: int) -> Iterator[None]:
        """The parameters as adapter ``version`` was (a no-op when they still are)."""
        if version == self.live_version:
            yield
            return
        if version not in self.versions:
            raise StaleBatchError(
                f"a batch sampled by adapter v{version} arrived, but the learner keeps only "
                f"v{list(self.versions)} (live: v{self.live_version}); the batch is staler than the learner "
                "supports -- lower the rollout staleness, or check that every push exported its version")
        with self.swapped_in(self.versions[version]):
            yield

    @contextmanager
    def as_reference(self) -> Iterator[None]:
        if self.reference is None:
            raise RuntimeError("no KL reference: begin_stage('grpo', ...) sets it at a GRPO stage's first "
                               "step")
        with self.swapped_in(self.reference):
            yield

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "versions": dict(self.versions),
                "live_version": self.live_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state["reference"]
        self.versions = OrderedDict(state["versions"])
        self.live_version = state["live_version"]
