"""File names of an exported adapter directory (pure: no torch), shared by the exporter (learner/export.py)
and the readers that must not load torch to check a directory (the Serve pre-flight, services/serve/)."""

from __future__ import annotations

VERSION_FILE = "medground_adapter.json"  # kept out of adapter_config.json: PEFT warns on unknown keys
