"""Dataset manifests: one CSV row per LeRobot dataset (schema in docs/manifest_schema.md)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from crab.training.rewards import QUALITY_LABELS

COLUMNS = ("name", "repo_id", "root", "task", "quality", "cycle")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class ManifestRow:
    name: str  # unique short name, reported as `dataset_name`
    repo_id: str  # LeRobot repo id
    root: Path  # dataset folder (relative roots resolved against the data root)
    task: str  # the task instruction of the dataset's episodes
    quality: str  # clean | cracked | failed
    cycles: tuple[str, ...]  # training cycles the dataset belongs to
    source: str  # "<manifest file>:<line>" for error messages


def load_manifest(path: str | Path, data_root: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest; every error names the file, line and column.

    The one manifest reader: UTF-8 with or without the byte-order mark that spreadsheets write ("CSV
    UTF-8"), any line ending (the csv module's `newline=""` takes LF, CRLF and CR)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{path}: not UTF-8 text (byte {e.start}); save it as CSV UTF-8 (columns {list(COLUMNS)})"
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]  # "name, repo_id" from hand edits
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; a manifest has columns {list(COLUMNS)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            source = f"{path}:{line}"
            for col in COLUMNS[:-1]:  # `cycle` may be empty
                if not (raw[col] or "").strip():
                    raise ManifestError(f"{source}: empty value in column `{col}`")
            quality = raw["quality"].strip()
            if quality not in QUALITY_LABELS:
                raise ManifestError(
                    f"{source}: unknown quality {quality!r} in column `quality`; expected one of {list(QUALITY_LABELS)}"
                )
            root = Path(raw["root"].strip())
            if not root.is_absolute():
                root = Path(data_root) / root
            rows.append(
                ManifestRow(
                    name=raw["name"].strip(),
                    repo_id=raw["repo_id"].strip(),
                    root=root,
                    task=raw["task"].strip(),
                    quality=quality,
                    cycles=tuple(c.strip() for c in (raw["cycle"] or "").split(";") if c.strip()),
                    source=source,
                )
            )
    if not rows:
        raise ManifestError(f"{path}: the manifest lists no datasets")
    seen: dict[str, str] = {}
    for row in rows:
        if row.name in seen:
            raise ManifestError(f"{row.source}: dataset name {row.name!r} already used at {seen[row.name]}")
        seen[row.name] = row.source
    return rows


def load_datasets(path: str | Path, data_root: str | Path) -> list[ManifestRow]:
    """A manifest's rows whose dataset folders all exist (`load_manifest`, then `check_roots`): what every
    tool reads before it opens any dataset, so a missing folder is reported by its manifest row, never by
    lerobot (which would look the repo id up on the Hub)."""
    rows = load_manifest(path, data_root)
    check_roots(rows)
    return rows


def check_roots(rows: list[ManifestRow]) -> None:
    """Fail early, naming the row, when a dataset folder is missing or is not a LeRobot dataset."""
    for row in rows:
        info = row.root / "meta" / "info.json"
        if not info.is_file():
            raise ManifestError(
                f"{row.source}: dataset {row.name!r}: no LeRobot dataset at {row.root} (missing {info}); "
                "check the manifest's `root` column and the data root"
            )
