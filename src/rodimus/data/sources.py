"""Turn user inputs (files, folders, globs, JSONL) into a stream of text documents.

Each document carries a stable id (path, or path:line for JSONL) so the train/validation split can be
decided per document from its id alone, independent of file order or of which other files are present.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Folders we never descend into: version-control metadata, caches and installed third-party packages.
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "site-packages", "dist-packages", "node_modules"}


@dataclass
class SourceStats:
    """Counts gathered while reading, reported by `prepare` and stored in meta.json."""

    files: int = 0  # files opened
    documents: int = 0  # documents yielded
    skipped_undecodable: int = 0  # files (or JSONL lines) that were not valid UTF-8 text
    skipped_empty: int = 0  # documents with no non-whitespace text
    skipped_bad_json: int = 0  # JSONL lines that did not parse or lacked the field
    bytes_read: int = 0  # raw bytes read from disk
    skipped_examples: list[str] = field(default_factory=list)  # first few skipped paths, for the report


def stdlib_root() -> Path:
    """The running interpreter's standard library folder: a corpus present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's own .py files (third-party site-packages excluded), sorted for determinism."""
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(out)


def resolve_inputs(inputs: list[str], extensions: list[str] | None = None) -> list[Path]:
    """Expand files, folders (recursive) and glob patterns into a sorted, de-duplicated file list.

    `extensions` (e.g. [".txt", ".md"]) filters files found in folders and globs; files named
    explicitly are always kept.
    """
    exts = tuple(e if e.startswith(".") else "." + e for e in extensions) if extensions else None
    found: dict[str, Path] = {}
    for item in inputs:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ValueError(f"data: glob pattern {item!r} matched no files")
            for m in matches:
                p = Path(m)
                if p.is_file() and (exts is None or p.name.endswith(exts)):
                    found[str(p.resolve())] = p
            continue
        p = Path(item)
        if p.is_file():
            found[str(p.resolve())] = p
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
                for f in filenames:
                    if f.startswith(".") or (exts is not None and not f.endswith(exts)):
                        continue
                    q = Path(dirpath) / f
                    found[str(q.resolve())] = q
        else:
            raise ValueError(f"data: input {item!r} is not a file, folder or matching glob pattern")
    files = [found[k] for k in sorted(found)]
    if not files:
        raise ValueError(f"data: no input files found in {inputs!r}")
    return files


def _decode(raw: bytes) -> str | None:
    if b"\x00" in raw:  # binary file; valid UTF-8 can contain NUL but real text never does
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _skip(stats: SourceStats, what: str, counter: str) -> None:
    setattr(stats, counter, getattr(stats, counter) + 1)
    if len(stats.skipped_examples) < 10:
        stats.skipped_examples.append(what)


def iter_documents(
    files: list[Path],
    stats: SourceStats,
    jsonl_field: str = "text",
    id_root: Path | None = None,
    on_bytes=None,
) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) for every readable document; undecodable input is counted, never fatal.

    Files ending in .jsonl/.ndjson hold one JSON object per line whose `jsonl_field` is the document;
    every other file is one document. `on_bytes(n)` is called as bytes are consumed (progress bars).
    """
    for path in files:
        rel = str(path.relative_to(id_root)) if id_root is not None else str(path)
        stats.files += 1
        if path.name.endswith(JSONL_SUFFIXES):
            with open(path, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    stats.bytes_read += len(line)
                    if on_bytes:
                        on_bytes(len(line))
                    if not line.strip():
                        continue
                    text_line = _decode(line)
                    if text_line is None:
                        _skip(stats, f"{rel}:{lineno}", "skipped_undecodable")
                        continue
                    try:
                        obj = json.loads(text_line)
                        text = obj[jsonl_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        _skip(stats, f"{rel}:{lineno}", "skipped_bad_json")
                        continue
                    if not isinstance(text, str):
                        _skip(stats, f"{rel}:{lineno}", "skipped_bad_json")
                        continue
                    if not text.strip():
                        stats.skipped_empty += 1
                        continue
                    stats.documents += 1
                    yield f"{rel}:{lineno}", text
            continue
        raw = path.read_bytes()
        stats.bytes_read += len(raw)
        if on_bytes:
            on_bytes(len(raw))
        text = _decode(raw)
        if text is None:
            _skip(stats, rel, "skipped_undecodable")
            continue
        if not text.strip():
            stats.skipped_empty += 1
            continue
        stats.documents += 1
        yield rel, text
