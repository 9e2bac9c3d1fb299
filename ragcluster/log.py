"""Logging, configured once by each process's __main__; a correlation id travels in a contextvar."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# fields of the request's access-log line, set by the server interceptor when the access log is on
request_fields: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar("request_fields",
                                                                                         default=None)
access_logger = logging.getLogger("ragcluster.access")


def annotate(**fields: object) -> None:
    """Add fields (coverage, timings, ...) to the current request's access-log line; no-op without one."""
    current = request_fields.get()
    if current is not None:
        current.update(fields)


def log_request(method: str, code: str, seconds: float, fields: dict[str, object]) -> None:
    """The request's one access-log line: JSON fields with --log-json, ``key=value`` pairs otherwise."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    record = {"rpc": method, "code": code, "duration_ms": round(seconds * 1000, 3), **fields}
    text = " ".join(f"{k}={v}" for k, v in record.items())
    access_logger.info("%s", text, extra={"fields": record})


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(level: str = "INFO", json_lines: bool = False, name: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        prefix = f"{name} " if name else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(str(level).upper())
