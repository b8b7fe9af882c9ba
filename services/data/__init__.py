"""The medical data layer: records, manifests, converters, image readers, synthetic data, inspection.

Only pure names are re-exported (no torch, no pyarrow, no pydicom at import time).
"""

from services.data.manifest import BadRecord, Manifest, ManifestError, load_manifest, write_manifest
from services.data.records import SIZE_BUCKETS, TASKS, Record, RecordMeta, Task, size_bucket

__all__ = [
    "SIZE_BUCKETS",
    "TASKS",
    "BadRecord",
    "Manifest",
    "ManifestError",
    "Record",
    "RecordMeta",
    "Task",
    "load_manifest",
    "size_bucket",
    "write_manifest",
]
