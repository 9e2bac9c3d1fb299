"""Configuration: one dataclass per service, each field documented; CLI flags derived from it, each
also settable by an environment variable ``RAGCLUSTER_<FIELD_NAME>`` (for Kubernetes manifests).

A field's ``metadata`` holds ``help`` (shown in --help with the env var and default) and optionally
``flag`` (a different flag name), ``short`` (e.g. ``-k``) or ``env=False`` (a flag only: not read from the
environment, e.g. a deprecated alias whose name now means something else elsewhere). Lists are repeatable flags; in the
environment they are comma-separated (``;``-separated when an item itself holds commas).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from ragcluster.security import ClientTls, TlsFiles

T = TypeVar("T", bound="DataclassInstance")
ENV_PREFIX = "RAGCLUSTER_"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _split_list(text: str) -> list[str]:
    sep = ";" if ";" in text else ","
    return [item.strip() for item in text.split(sep) if item.strip()]


def _field_type(cls: type, field: dataclasses.Field[object]) -> Any:  # a type form: a class, list[int], X | None
    return typing.get_type_hints(cls)[field.name]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[DataclassInstance],
                         env: Mapping[str, str] | None = None) -> None:
    """Add one flag per field of dataclass ``cls``; defaults come from the environment when set there."""
    env = os.environ if env is None else env
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli") is False:
            continue
        ftype = _field_type(cls, field)
        origin = typing.get_origin(ftype)
        args = typing.get_args(ftype)
        optional = origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args
        base = next((a for a in args if a is not type(None)), str) if optional else ftype
        name = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        if name in parser._option_string_actions:  # already defined (e.g. by vLLM's engine flags): share it
            continue
        names = [name] + ([field.metadata["short"]] if "short" in field.metadata else [])
        var = env_name(field.name) if field.metadata.get("env", True) else ""
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        help_text = field.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": field.name}
        raw = env.get(var) if var else None
        shown_env = f" [env: {var}]" if var else ""
        if base is bool:
            if raw is not None:
                default = _parse_bool(raw)
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            if raw is not None:
                default = [item(x) for x in _split_list(raw)]
            kwargs.update(action="append", type=item, default=None)
            kwargs["help"] = f"{help_text} (repeatable){shown_env} (default: {default or 'none'})"
            parser.add_argument(*names, **kwargs)
            parser.set_defaults(**{f"_{field.name}_list_default": default})
            continue
        else:
            if raw is not None:
                default = base(raw)
            kwargs["type"] = base
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            if "metavar" in field.metadata:
                kwargs["metavar"] = field.metadata["metavar"]
        kwargs["default"] = default
        kwargs["help"] = f"{help_text}{shown_env} (default: {default if default not in (None, '') else 'none'})"
        parser.add_argument(*names, **kwargs)


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Build ``cls`` from parsed arguments (as added by add_config_arguments)."""
    values: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        if not hasattr(ns, field.name):
            continue
        value = getattr(ns, field.name)
        if value is None and hasattr(ns, f"_{field.name}_list_default"):
            value = getattr(ns, f"_{field.name}_list_default")
        if value is None and field.default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        if value is None and field.default is not dataclasses.MISSING:
            value = field.default
        values[field.name] = value
    return cls(**values)


def option(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A documented dataclass field."""
    meta["help"] = help
    if isinstance(default, list):
        items: list[object] = default
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class ServerConfig:
    """What every server process shares: addresses, metrics, logging, shutdown."""

    host: str = option("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = option(0, "gRPC port (0 = pick a free one; see --ready-file)")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 = pick a free one, -1 = off)")
    metrics_host: str = option("", "interface for /metrics (default: --host); metrics carry no auth, so bind "
                                   "them where only Prometheus reaches")
    ready_file: str = option("", "write {grpc, metrics, pid} as JSON here once SERVING (for launchers)")
    grace_seconds: float = option(10.0, "on SIGTERM/SIGINT: seconds to let in-flight calls finish")
    log_level: str = option("INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    log_json: bool = option(False, "log one JSON object per line (for Kubernetes)")
    access_log: bool = option(False, "log one line per request (RPC, status, duration, request/trace id; the "
                                     "router adds coverage and timings), as JSON with --log-json")
    max_message_bytes: int = option(64 * 1024 * 1024, "largest gRPC message sent or received")
    tls_cert: str = option("", "PEM certificate (chain) this server presents, and uses as its client certificate "
                               "towards other tiers (mTLS); re-read when the file changes")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option("", "PEM CA bundle: verifies the servers this process calls and, on shards and generators, "
                             "the client certificates of its callers (mTLS)")
    tls_server_name: str = option("", "name to verify in the certificates of the servers this process calls "
                                      "(default: the host of each address; set it when dialling pod IPs)")
    insecure: bool = option(False, "serve and call without TLS or authentication; without it a server refuses "
                                   "to bind a non-loopback address without --tls-cert")
    health_port: int = option(-1, "also serve grpc.health.v1 alone, in plaintext, on this port (-1 = off, 0 = pick "
                                  "one): for probes that cannot speak TLS, e.g. the kubelet's grpc probe; it "
                                  "tells SERVING or not and nothing else")
    max_connection_age_seconds: float = option(0.0, "close client connections after this long (0 = never): they "
                                                    "reconnect, with a new TLS handshake, so a certificate or CA "
                                                    "taken out of --tls-ca stops being accepted within this time "
                                                    "(calls in flight finish on the old connection)")

    def tls_files(self) -> TlsFiles:
        from ragcluster.security import TlsFiles

        if self.insecure:
            return TlsFiles()
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca)

    def client_tls(self) -> ClientTls | None:
        """Credentials for this server's own outgoing channels (None: plaintext)."""
        from ragcluster.security import ClientTls

        files = self.tls_files()
        return ClientTls(files, server_name=self.tls_server_name) if files.enabled else None
