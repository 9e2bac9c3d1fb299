"""Helpers every command shares: the router address default, filters from --where, output, errors."""

from __future__ import annotations

import sys

DEFAULT_ROUTER = "127.0.0.1:50051"

WHERE_HELP = ("metadata filter, ANDed when repeated: FIELD=VALUE, FIELD>=N, FIELD>N, FIELD<=N, FIELD<N, "
              "FIELD~=A,B,C (any of)")


class CliError(Exception):
    """A problem the user can fix: printed as ``ragcluster: error: ...`` with exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_where(conditions: list[str]) -> list[dict]:
    """``["topic=science", "words>=30", "topic~=a,b"]`` -> filter conditions for the client."""
    out = []
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
                        out.append({"field": field, key: float(value)})
                    except ValueError:
                        raise CliError(f"--where {cond!r}: {op} needs a number") from None
                break
        else:
            raise CliError(f"--where {cond!r}: expected FIELD=VALUE, FIELD>=N, ... or FIELD~=A,B")
    return out


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = 2) -> int:
    print(f"ragcluster: error: {message}", file=sys.stderr)
    return code
