"""Files that survive a crash: contents fsynced before they are renamed into place, and the directory that
holds the new name fsynced after, so a kill (or a power cut) leaves the old file or the new one, never a
torn one (README, "Reliability").

It lives in learner/, the lowest package that writes checkpoints; services/ (run checkpoints, the metrics
log) use the same functions. Pure standard library.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory `path` (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root` (and `root`): call before renaming it into place."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically: a temporary file beside it, fsynced, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the complete directory `tmp` to `final`, replacing an older `final`: everything under `tmp` is
    fsynced first; at every instant a complete `final` (old or new) or the old one as `.<name>.old` exists."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # left by a crash between the two renames below
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
