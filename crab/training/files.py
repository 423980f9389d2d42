"""One writer discipline for every output file: refuse a bad destination before any long work, write a
temporary file beside the destination, then rename it into place.

A kill at any moment leaves either the previous file or the new one, never half a file, and never
removes anything the writer did not create. The temporary file is opened like any new file (the process
umask applies, not `mkstemp`'s 0600), so outputs on shared storage stay readable by the group.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from crab.training.manifest import ManifestError


class OutputError(ManifestError):
    """An output path that cannot be written (a folder, under a file): bad input, reported like a manifest's."""


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or an `OutputError` naming `what` (the flag or key) when no file can be written
    there: it is a folder, or one of its parents is a file. Called before any long work."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; name the file to write, e.g. {path / 'out'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
            break
    return path


def temporary_name(path: Path) -> Path:
    """The hidden name beside `path` that a writer fills before renaming (one per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename; on any
    error (or Ctrl-C) the temporary file is removed and `path` is left as it was."""
    path = check_output_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, line endings as given) through `write_atomically`."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))
