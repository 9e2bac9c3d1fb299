"""Domain types of the client library: what RouterClient takes and returns (no protobuf, no grpc).

Conversions from and to the wire types live in ragcluster/convert.py.
"""

from __future__ import annotations

from typing import TypedDict

from ragcluster.documents import MetadataValue


class Condition(TypedDict, total=False):
    """One metadata filter condition (conditions are ANDed): ``field`` with exactly one of ``equals``,
    ``any_of`` or range bounds (``gte``, ``gt``, ``lte``, ``lt``)."""

    field: str
    equals: MetadataValue
    any_of: list[MetadataValue]
    gte: float
    gt: float
    lte: float
    lt: float
