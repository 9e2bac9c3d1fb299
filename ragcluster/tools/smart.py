"""The classic SMART test-collection format (CISI, Cranfield, MED, CACM, NPL) (pure: no grpc).

Documents (``CISI.ALL``) and queries (``CISI.QRY``) are records that start with ``.I <id>``, followed by
fields ``.T`` (title), ``.A`` (authors), ``.W`` (text), ``.X`` (citations), ``.B``, ``.K``, ...; relevance
judgements (``CISI.REL``) are whitespace-separated ``query-id doc-id ...`` lines. ``ragcluster ingest``
reads such a document file, ``ragcluster eval`` its queries and judgements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument


@dataclass
class SmartRecord:
    """One ``.I`` record: its id and fields (``.T`` title, ``.A`` authors, ``.W`` text, ...)."""

    id: str
    fields: dict[str, str]

    @property
    def title(self) -> str:
        return self.fields.get("T", "")

    @property
    def text(self) -> str:
        """The abstract/query text (``.W``); the title when a record has no ``.W``."""
        return self.fields.get("W", "") or self.title

    @property
    def authors(self) -> str:
        return self.fields.get("A", "")


_SMART_FIELD = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


def _normalise_id(raw: str) -> str:
    raw = raw.strip()
    return str(int(raw)) if raw.isdigit() else raw  # Cranfield numbers queries 001, 002, ...


def is_smart(path: str | Path) -> bool:
    """Whether ``path`` is a SMART file: its first non-empty line starts with ``.I``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.startswith(".I")
    return False


def read_smart(path: str | Path) -> list[SmartRecord]:
    """Records of a SMART file (``CISI.ALL``, ``CISI.QRY``, ``cran.all.1400``, ``MED.ALL``, ``cacm.all``):
    ``.I id`` starts a record; ``.X`` (citations), ``.B``, ``.N`` ... are kept as fields too. Lines of a
    field are joined with single spaces."""
    parsed: list[tuple[str, dict[str, list[str]]]] = []
    field_name = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            m = _SMART_FIELD.match(line)
            if m and m.group(1) == "I":
                if not (m.group(2) or "").strip():
                    raise InvalidArgument(f"{path}:{n}: .I without an id")
                parsed.append((_normalise_id(m.group(2)), {}))
                field_name = ""
            elif not parsed:
                if line.strip():
                    raise InvalidArgument(f"{path}:{n}: expected '.I <id>' to start a record")
            elif m:
                field_name = m.group(1)
                parsed[-1][1].setdefault(field_name, []).extend([m.group(2)] if m.group(2) else [])
            elif field_name and line.strip():
                parsed[-1][1][field_name].append(line.strip())
    if not parsed:
        raise InvalidArgument(f"{path}: no '.I' records")
    return [SmartRecord(rid, {k: " ".join(v) for k, v in fields.items()}) for rid, fields in parsed]


def read_smart_documents(path: str | Path) -> list[Document]:
    """Documents of a SMART collection file: id from ``.I``, title ``.T``, text ``.W``, ``authors`` metadata."""
    docs = []
    for r in read_smart(path):
        docs.append(Document(r.id, r.text, r.title, {"authors": r.authors} if r.authors else {}))
    return docs


def numeric_first_line(path: str | Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return all(_is_number(t) for t in line.split())
    return False


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_smart_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Relevance judgements as the SMART collections ship them, whitespace-separated:
    ``qid docid`` (+ ignored columns: CISI.REL, CACM qrels.text ``qid docid 0 0``), or TREC's
    ``qid 0 docid grade`` (MED.REL) when the second of four columns is 0 and the fourth is a grade.
    Every listed pair is relevant (grade 1) unless a TREC grade says otherwise."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) < 2 or not all(_is_number(c) for c in cols):
                raise InvalidArgument(f"{path}:{n}: expected 'query-id doc-id ...' numbers, got {line.strip()!r}")
            if len(cols) == 4 and cols[1] == "0" and float(cols[3]) >= 1:  # TREC: qid iter docid grade
                qid, doc, grade = cols[0], cols[2], int(float(cols[3]))
            else:
                qid, doc, grade = cols[0], cols[1], 1
            qrels.setdefault(_normalise_id(qid), {})[_normalise_id(doc)] = grade
    return qrels
