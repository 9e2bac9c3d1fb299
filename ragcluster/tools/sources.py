"""Document sources for ingest (pure: no grpc). Each yields Record(file, line, document | error)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragcluster.documents import Document, MetadataValue
from ragcluster.errors import InvalidArgument
from ragcluster.security import redact_url


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


def read_smart_files(paths: list[str]) -> Iterator[Record]:
    """Documents of SMART collection files (``CISI.ALL``, ``cran.all.1400``, ``MED.ALL``, ``cacm.all``):
    id ``.I``, title ``.T``, text ``.W``, metadata ``authors`` (``.A``)."""
    from ragcluster.tools.smart import read_smart_documents

    for path in paths:
        if not Path(path).is_file():
            yield Record(str(path), 0, error="no such file")
            continue
        try:
            docs = read_smart_documents(path)
        except InvalidArgument as exc:
            yield Record(str(path), 0, error=str(exc))
            continue
        for n, doc in enumerate(docs, 1):
            yield Record(str(path), n, doc)


def _metadata_value(text: object) -> MetadataValue:
    """CSV/SQL cell -> metadata value: numbers become numbers, the rest stays a string."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    value = str(text).strip()
    for cast in (int, float):
        try:
            number: float = cast(value)
        except ValueError:
            continue
        return number if math.isfinite(number) else value  # "nan", "inf" stay strings
    return value


def _row_document(row: dict[str, object], id_col: str, text_col: str, title_col: str, where: str) -> Document:
    doc_id, text = row.get(id_col), row.get(text_col)
    if doc_id is None or str(doc_id).strip() == "":
        raise InvalidArgument(f"{where}: empty {id_col!r}")
    if text is None:
        raise InvalidArgument(f"{where}: empty {text_col!r}")
    title = row.get(title_col) or ""
    metadata = {k: _metadata_value(v) for k, v in row.items()
                if k not in (id_col, text_col, title_col) and k and v is not None and str(v).strip() != ""}
    doc = Document(str(doc_id), str(text), str(title), metadata)
    doc.validate(where)
    return doc


def read_csv(paths: list[str], id_col: str = "id", text_col: str = "text", title_col: str = "title",
             delimiter: str = ",") -> Iterator[Record]:
    """CSV files with a header; ``id_col``/``text_col`` (and ``title_col`` if present) make the document,
    every other non-empty column becomes metadata (numbers as numbers)."""
    import csv

    csv.field_size_limit(1 << 24)
    for path in paths:
        try:
            f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - an open error is a Record, not a raise
        except OSError as exc:
            yield Record(str(path), 0, error=exc.strerror or str(exc))
            continue
        with f:
            reader = csv.DictReader(f, delimiter=delimiter)
            try:
                header = reader.fieldnames or []
            except (csv.Error, UnicodeDecodeError) as exc:
                yield Record(str(path), 1, error=f"unreadable header: {exc}")
                continue
            missing = [c for c in (id_col, text_col) if c not in header]
            if missing:
                yield Record(str(path), 1, error=f"header lacks column(s) {missing} (has {header})")
                continue
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except (csv.Error, UnicodeDecodeError) as exc:
                    yield Record(str(path), reader.line_num, error=f"malformed row: {exc}")
                    break
                if None in row:
                    yield Record(str(path), reader.line_num, error="more cells than header columns")
                    continue
                try:
                    yield Record(str(path), reader.line_num,
                                 _row_document(row, id_col, text_col, title_col, f"line {reader.line_num}"))
                except InvalidArgument as exc:
                    yield Record(str(path), reader.line_num, error=str(exc))


TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")


def read_dir(paths: list[str]) -> Iterator[Record]:
    """Directories of .txt / .md / .html files (recursively); id = path relative to the directory,
    title = the first Markdown heading or HTML <title>/<h1>, else the file name; HTML is reduced to text."""
    for root in paths:
        base = Path(root)
        files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        for p in files:
            rel = p.relative_to(base).as_posix()
            try:
                raw = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                yield Record(str(p), 0, error=f"not UTF-8: {exc.reason}")
                continue
            if p.suffix.lower() in (".html", ".htm"):
                title, text = html_to_text(raw)
            else:
                title, text = "", raw.strip()
                if p.suffix.lower() in (".md", ".markdown"):
                    heading = next((ln.lstrip("#").strip() for ln in raw.splitlines() if ln.startswith("#")), "")
                    title = heading
            doc = Document(rel, text, title or p.stem, {"path": rel, "format": p.suffix.lower().lstrip(".")})
            try:
                doc.validate(str(p))
                yield Record(str(p), 1, doc)
            except InvalidArgument as exc:
                yield Record(str(p), 1, error=str(exc))


def html_to_text(markup: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page, without scripts and styles."""
    from html.parser import HTMLParser

    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.title, self.h1 = "", ""
            self._skip, self._in = 0, ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in ("script", "style", "noscript"):
                self._skip += 1
            self._in = tag
            if tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "tr", "section", "article"):
                self.parts.append("\n")

        def handle_endtag(self, tag: str) -> None:
            if tag in ("script", "style", "noscript") and self._skip:
                self._skip -= 1
            self._in = ""

        def handle_data(self, data: str) -> None:
            if self._skip:
                return
            if self._in == "title":
                self.title += data
                return
            if self._in == "h1" and not self.h1:
                self.h1 = data.strip()
            self.parts.append(data)

    parser = _Text()
    parser.feed(markup)
    text = "\n".join(" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in text.splitlines() if line)
    return (parser.title.strip() or parser.h1), text


def read_sql(database: str, query: str, id_col: str = "id", text_col: str = "text",
             title_col: str = "title") -> Iterator[Record]:
    """Rows of ``query`` on ``database``: a SQLite file path (stdlib sqlite3) or any SQLAlchemy URL
    (``sqlite:///f.db``, ``postgresql://...``; the driver must be installed). Columns as for CSV."""
    where = f"sql:{redact_url(database)}"  # error reports never show a password
    if "://" not in database:
        import sqlite3

        if not Path(database).is_file():
            yield Record(where, 0, error="no such SQLite file")
            return
        lite = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            try:
                cursor = lite.execute(query)
            except sqlite3.Error as exc:
                yield Record(where, 0, error=f"query failed: {exc}")
                return
            columns = [c[0] for c in cursor.description or []]
            yield from _sql_rows(where, columns, cursor, id_col, text_col, title_col)
        finally:
            lite.close()
        return
    try:
        import sqlalchemy
    except ImportError:
        yield Record(where, 0, error="a database URL needs SQLAlchemy: pip install sqlalchemy (and its driver)")
        return
    try:
        engine = sqlalchemy.create_engine(database)
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(sqlalchemy.text(query))
            yield from _sql_rows(where, list(result.keys()), result, id_col, text_col, title_col)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        yield Record(where, 0, error=redact_url(f"query failed: {exc.__class__.__name__}: {exc}"))


def _sql_rows(where: str, columns: Sequence[str], rows: Iterable[Sequence[object]], id_col: str, text_col: str,
              title_col: str) -> Iterator[Record]:
    missing = [c for c in (id_col, text_col) if c not in columns]
    if missing:
        yield Record(where, 0, error=f"query returns no column(s) {missing} (has {columns})")
        return
    for n, row in enumerate(rows, 1):
        try:
            yield Record(where, n, _row_document(dict(zip(columns, row)), id_col, text_col, title_col, f"row {n}"))
        except InvalidArgument as exc:
            yield Record(where, n, error=str(exc))
