"""Helpers every command shares: the router address default, filters from --where, output, errors."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ragcluster.config import option
from ragcluster.documents import MetadataValue
from ragcluster.types import Condition

if TYPE_CHECKING:
    from rich.console import Console

    from ragcluster.client import RouterClient
    from ragcluster.security import ClientTls

DEFAULT_ROUTER = "127.0.0.1:50051"

WHERE_HELP = ("metadata filter, ANDed when repeated: FIELD=VALUE, FIELD>=N, FIELD>N, FIELD<=N, FIELD<N, "
              "FIELD~=A,B,C (any of)")


@dataclass
class RetrievalOptions:
    """How search, ask and eval retrieve (empty / 0 / negative = the router's default)."""

    mode: str = option("", "retrieval mode: dense (embeddings), lexical (BM25) or hybrid (both, fused); default: "
                           "the router's --search-mode", choices=["", "dense", "lexical", "hybrid"])
    fusion: str = option("", "hybrid fusion: rrf or weighted (default: the router's --fusion)",
                         choices=["", "rrf", "weighted"])
    rrf_k: int = option(0, "RRF constant (default: the router's, 60)")
    alpha: float = option(-1.0, "weighted fusion: weight of the dense score, 0..1 (default: the router's, 0.5)")
    window: int = option(0, "hybrid: candidates per retriever before fusing (default: the router's)")


def retrieval_kwargs(opts: RetrievalOptions) -> dict[str, Any]:
    """Client keyword arguments for the retrieval options that were set."""
    return {"mode": opts.mode, "fusion": opts.fusion, "rrf_k": opts.rrf_k or None,
            "alpha": opts.alpha if opts.alpha >= 0 else None, "window": opts.window or None}


@dataclass
class ConnectOptions:
    """How every client command reaches the router. Secure by default: TLS with the CA and the admin API key
    that `ragcluster up` created in DATA_DIR/certs, or explicit --tls-ca / --token."""

    router: str = option(DEFAULT_ROUTER, "router address host:port")
    data_dir: str = option("./data", "data dir of `ragcluster up`: its certs/ca.crt and certs/admin.token are used "
                                     "unless --tls-ca / --token are given")
    tls_ca: str = option("", "PEM CA bundle that signed the router's certificate")
    tls_cert: str = option("", "PEM client certificate (only if the router asks for one)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_server_name: str = option("", "name to verify in the router's certificate (default: the host of --router)")
    token: str = option("", "API key (sent as 'authorization: Bearer ...'); a path to a file holding it also works")
    insecure: bool = option(False, "plaintext, no API key (a cluster started with --insecure)")


@dataclass
class QueryOptions(RetrievalOptions, ConnectOptions):
    """What search and ask share: the router, how to retrieve, and the metadata filter."""

    where: list[str] = option([], WHERE_HELP, metavar="COND")


def query_kwargs(opts: QueryOptions) -> dict[str, Any]:
    """Client keyword arguments for --where and the retrieval options that were set (a bad --where is a
    CliError, raised before anything is sent)."""
    return {"where": parse_where(opts.where), **retrieval_kwargs(opts)}


def client_security(opts: ConnectOptions) -> ClientTls | None:
    """The ClientTls for ``opts`` (None with --insecure); a CliError saying what to pass when none is found."""
    from ragcluster.security import ClientTls, TlsFiles

    if opts.insecure:
        return None
    certs = Path(opts.data_dir) / "certs"
    ca = opts.tls_ca or (str(certs / "ca.crt") if (certs / "ca.crt").is_file() else "")
    if not ca:
        raise CliError(f"no CA to verify the router: {certs / 'ca.crt'} does not exist. Pass --data-dir DIR (the "
                       "--data-dir of `ragcluster up`, env RAGCLUSTER_DATA_DIR), --tls-ca FILE, or --insecure for a "
                       "cluster started with --insecure")
    token = opts.token
    if token and os.path.isfile(token):
        token = Path(token).read_text().strip()
    if not token and (certs / "admin.token").is_file():
        token = (certs / "admin.token").read_text().strip()
    try:
        return ClientTls(TlsFiles(opts.tls_cert, opts.tls_key, ca), token=token, server_name=opts.tls_server_name)
    except ValueError as exc:  # InvalidArgument: a missing file, a cert without its key
        raise CliError(str(exc)) from None


def connect(opts: ConnectOptions, timeout: float = 60.0) -> RouterClient:
    """A RouterClient for ``opts``."""
    from ragcluster.client import RouterClient

    return RouterClient(opts.router, timeout=timeout, security=client_security(opts))


class CliError(Exception):
    """A problem the user can fix: printed as ``ragcluster: error: ...`` with exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _value(text: str) -> MetadataValue:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def parse_where(conditions: list[str]) -> list[Condition]:
    """``["topic=science", "words>=30", "topic~=a,b"]`` -> filter conditions for the client."""
    out: list[Condition] = []
    for cond in conditions:
        for op, key in ((">=", "gte"), ("<=", "lte"), ("~=", "any_of"), (">", "gt"), ("<", "lt"), ("=", "equals")):
            field, sep, value = cond.partition(op)
            if sep and field.strip():
                field = field.strip()
                if key == "any_of":
                    out.append({"field": field, "any_of": [_value(v) for v in value.split(",") if v.strip()]})
                elif key == "equals":
                    out.append({"field": field, "equals": _value(value.strip())})
                else:
                    try:
                        # key is one of the range bounds gte, gt, lte, lt
                        out.append(cast(Condition, {"field": field, key: float(value)}))
                    except ValueError:
                        raise CliError(f"--where {cond!r}: {op} needs a number") from None
                break
        else:
            raise CliError(f"--where {cond!r}: expected FIELD=VALUE, FIELD>=N, ... or FIELD~=A,B")
    return out


def escape(text: str) -> str:
    """Document text (titles, snippets, answers) as literal text in rich output: its [markup] is not interpreted."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = 2) -> int:
    print(f"ragcluster: error: {message}", file=sys.stderr)
    return code
