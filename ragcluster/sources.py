"""Document sources for ingest (pure: no grpc). Each yields Record(file, line, document | error)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument


@dataclass
class Record:
    file: str
    line: int
    document: Document | None = None
    error: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_jsonl(paths: list[str]) -> Iterator[Record]:
    """JSONL lines ``{"id": str, "text": str, "title"?: str, "metadata"?: {str: str|number}}``; blank
    lines are skipped; a bad line yields a Record with ``error`` set (the caller decides skip or stop)."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            yield Record(str(path), 0, error="no such file")
            continue
        with p.open(encoding="utf-8", errors="strict") as f:
            line_no = 0
            while True:
                try:
                    line = f.readline()
                except UnicodeDecodeError as exc:
                    yield Record(str(path), line_no + 1, error=f"not UTF-8: {exc.reason}")
                    return
                if not line:
                    break
                line_no += 1
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Record(str(path), line_no, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
                    continue
                try:
                    yield Record(str(path), line_no, Document.from_json(obj, "line"))
                except InvalidArgument as exc:
                    yield Record(str(path), line_no, error=str(exc))
