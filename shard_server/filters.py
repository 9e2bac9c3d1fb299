"""Metadata filters: validation against the fields a shard has seen, and compilation to SQL clauses over
the store's ``meta_kv`` table (pure: no grpc). The matching internal ids then become a FAISS IDSelector,
so the filter is applied inside the index search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ragcluster.documents import MetadataValue
from ragcluster.errors import InvalidArgument

MAX_CONDITIONS = 32
MAX_VALUES = 1024


@dataclass
class Condition:
    field: str
    equals: MetadataValue | None = None
    any_of: list[MetadataValue] | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    @property
    def is_range(self) -> bool:
        return any(v is not None for v in (self.gte, self.gt, self.lte, self.lt))


@dataclass
class Filter:
    must: list[Condition] = field(default_factory=list)


def _value_clause(value: MetadataValue) -> tuple[str, list]:
    if isinstance(value, (bool, int, float)) and not isinstance(value, str):
        return "n = ?", [float(value)]
    return "s = ?", [str(value)]


def compile_filter(flt: Filter, fields: dict[str, str], where: str = "filter") -> list[tuple[str, list]]:
    """SQL clauses (AND) for ``flt``; raises InvalidArgument naming the offending condition."""
    if len(flt.must) > MAX_CONDITIONS:
        raise InvalidArgument(f"{where}.must: at most {MAX_CONDITIONS} conditions")
    clauses = []
    for i, cond in enumerate(flt.must):
        here = f"{where}.must[{i}]"
        if not cond.field:
            raise InvalidArgument(f"{here}.field: empty")
        kind = fields.get(cond.field)
        if kind is None:
            known = ", ".join(sorted(fields)) or "none yet"
            raise InvalidArgument(f"{here}.field: unknown metadata field {cond.field!r} (known: {known})")
        tests = sum([cond.equals is not None, cond.any_of is not None, cond.is_range])
        if tests != 1:
            raise InvalidArgument(f"{here}: set exactly one of equals, any_of, range")
        if cond.equals is not None:
            _check_value_kind(cond.equals, kind, f"{here}.equals")
            sql, params = _value_clause(cond.equals)
            clauses.append((f"key = ? AND {sql}", [cond.field, *params]))
        elif cond.any_of is not None:
            if not cond.any_of or len(cond.any_of) > MAX_VALUES:
                raise InvalidArgument(f"{here}.any_of: between 1 and {MAX_VALUES} values")
            strings = [v for v in cond.any_of if isinstance(v, str)]
            numbers = [float(v) for v in cond.any_of if not isinstance(v, str)]
            for j, v in enumerate(cond.any_of):
                _check_value_kind(v, kind, f"{here}.any_of[{j}]")
            parts, params = [], [cond.field]
            if strings:
                parts.append(f"s IN ({','.join('?' * len(strings))})")
                params += strings
            if numbers:
                parts.append(f"n IN ({','.join('?' * len(numbers))})")
                params += numbers
            clauses.append((f"key = ? AND ({' OR '.join(parts)})", params))
        else:
            if kind not in ("number", "mixed"):
                raise InvalidArgument(f"{here}.range: field {cond.field!r} holds {kind} values, not numbers")
            parts, params = [], [cond.field]
            for op, bound in ((">=", cond.gte), (">", cond.gt), ("<=", cond.lte), ("<", cond.lt)):
                if bound is not None:
                    if not math.isfinite(bound):
                        raise InvalidArgument(f"{here}.range: bounds must be finite")
                    parts.append(f"n {op} ?")
                    params.append(bound)
            clauses.append((f"key = ? AND n IS NOT NULL AND {' AND '.join(parts)}", params))
    return clauses


def _check_value_kind(value: MetadataValue, kind: str, where: str) -> None:
    if kind == "mixed":
        return
    got = "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else "string"
    if got != kind and not (kind == "bool" and got == "number") and not (kind == "number" and got == "bool"):
        raise InvalidArgument(f"{where}: field holds {kind} values, got a {got}")
