"""`ragcluster ingest`: JSONL, CSV/TSV, directories or SQL rows through the router; resumable, optionally chunked."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import grpc

from ragcluster.config import option
from ragcluster.tools.cli.common import CliError, ConnectOptions, connect, fail

if TYPE_CHECKING:
    from ragcluster.documents import Document
    from ragcluster.tools.sources import Record


@dataclass
class IngestOptions(ConnectOptions):
    format: str = option("auto", "source format (auto: a directory is dir, *.csv/*.tsv is csv, a file starting "
                                 "with '.I' is smart (CISI.ALL, cran.all.1400, MED.ALL), else jsonl)",
                         choices=["auto", "jsonl", "csv", "dir", "smart"])
    id_col: str = option("id", "csv/sql: the id column")
    text_col: str = option("text", "csv/sql: the text column")
    title_col: str = option("title", "csv/sql: the title column (optional); other columns become metadata")
    sql: str = option("", "ingest the rows of this query (columns as for csv) from --db instead of files")
    db: str = option("", "for --sql: a SQLite file or any SQLAlchemy URL (sqlite:///f.db, postgresql://...)")
    chunk_tokens: int = option(0, "split documents into chunks of this many embedding-model tokens (0 = one "
                                  "document, one vector); chunk ids are ID#n with metadata parent_id and chunk")
    chunk_overlap: int = option(0, "tokens shared by consecutive chunks")
    resume: bool = option(True, "skip documents already stored with the same content (id and content hash)")
    collection: str = option("", "collection to write to (e.g. a new index built with another embedding model; "
                                 "see `ragcluster switch`); default: the active one")
    batch_size: int = option(64, "documents per request")
    on_error: str = option("stop", "a bad line: report it and stop, or report it and skip it", choices=["stop", "skip"])
    json: bool = option(False, "print a JSON summary")


@dataclass
class IngestSummary:
    """What `ingest --json` prints."""

    read: int = 0
    skipped: int = 0
    unchanged: int = 0
    chunks: int = 0
    acknowledged: int = 0
    errors: list[dict[str, str | int]] = field(default_factory=list)
    seconds: float = 0.0
    docs_per_second: float = 0.0


def _ingest_records(opts: IngestOptions, files: list[str]) -> tuple[Iterator[Record], int | None]:
    """(records iterator, expected count or None) for the chosen source."""
    from pathlib import Path

    from ragcluster.tools.smart import is_smart
    from ragcluster.tools.sources import read_csv, read_dir, read_jsonl, read_smart_files, read_sql

    if opts.sql:
        if not opts.db:
            raise CliError("--sql needs --db (a SQLite file or a SQLAlchemy URL)")
        return read_sql(opts.db, opts.sql, opts.id_col, opts.text_col, opts.title_col), None
    if not files:
        raise CliError("give FILE... (or --sql with --db)")
    fmt = opts.format
    if fmt == "auto":
        kinds = {"dir" if Path(f).is_dir() else "csv" if f.lower().endswith((".csv", ".tsv"))
                 else "smart" if Path(f).is_file() and is_smart(f) else "jsonl" for f in files}
        if len(kinds) > 1:
            raise CliError(f"mixed sources {sorted(kinds)}: ingest them separately or set --format")
        fmt = kinds.pop()
    if fmt == "smart":
        return read_smart_files(files), None
    total = 0
    for f in files:
        p = Path(f)
        if fmt == "dir":
            if not p.is_dir():
                raise CliError(f"{f}: not a directory")
            total += sum(1 for x in p.rglob("*") if x.is_file() and x.suffix.lower() in (".txt", ".md", ".markdown",
                                                                                       ".html", ".htm"))
        else:
            try:
                with open(p, "rb") as fh:
                    total += sum(1 for line in fh if line.strip()) - (1 if fmt == "csv" else 0)
            except OSError as exc:
                raise CliError(f"{f}: {exc.strerror}") from None
    if fmt == "csv":
        delimiter = "\t" if all(f.lower().endswith(".tsv") for f in files) else ","
        return read_csv(files, opts.id_col, opts.text_col, opts.title_col, delimiter), total
    if fmt == "dir":
        return read_dir(files), total
    return read_jsonl(files), total


def cmd_ingest(opts: IngestOptions, ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    records, total = _ingest_records(opts, ns.files)
    chunker = None
    if opts.chunk_tokens:
        from ragcluster.errors import InvalidArgument
        from ragcluster.tools.chunking import Chunker, load_embedding_tokenizer

        try:
            chunker = Chunker(load_embedding_tokenizer(), opts.chunk_tokens, opts.chunk_overlap)
        except InvalidArgument as exc:
            return fail(str(exc))
    summary = IngestSummary()
    stopped: list[Record] = []
    bar = tqdm(total=None if chunker else total, unit="chunk" if chunker else "doc", desc="ingest",
               disable=opts.json or None, dynamic_ncols=True)

    def documents() -> Iterator[Document]:
        for record in records:
            if record.error or record.document is None:
                summary.errors.append({"file": record.file, "line": record.line, "error": record.error})
                if opts.json:
                    print(f"{record.where}: {record.error}", file=sys.stderr)
                else:
                    bar.write(f"{record.where}: {record.error}", file=sys.stderr)
                if opts.on_error == "stop":
                    stopped.append(record)
                    return
                summary.skipped += 1
                continue
            summary.read += 1
            if chunker is None:
                yield record.document
            else:
                chunks = chunker.split(record.document)
                summary.chunks += len(chunks)
                yield from chunks

    start = time.perf_counter()
    try:
        with connect(opts) as client:
            result = client.ingest(documents(), batch_size=opts.batch_size, resume=opts.resume,
                                   on_ack=bar.update, on_skip=bar.update, collection=opts.collection)
    except grpc.RpcError as exc:
        bar.close()
        return fail(f"ingest failed: {exc.code().name}: {exc.details()} (re-run to resume: acknowledged documents "
                     f"are skipped)")
    bar.close()
    summary.acknowledged = result.acknowledged
    summary.unchanged = result.unchanged
    summary.seconds = round(time.perf_counter() - start, 3)
    summary.docs_per_second = round(result.acknowledged / max(summary.seconds, 1e-9), 1)
    if opts.json:
        print(json.dumps(asdict(summary)))
    else:
        what = f"{result.acknowledged} chunks of {summary.read} documents" if chunker else \
            f"{result.acknowledged} documents"
        print(f"acknowledged {what} in {summary.seconds:.1f}s ({summary.docs_per_second:.0f}/s); "
              f"{result.unchanged} unchanged, {summary.skipped} bad skipped")
    if stopped:
        return fail(f"stopped at {stopped[0].where} (use --on-error skip to continue past bad lines)", 1)
    return 0
