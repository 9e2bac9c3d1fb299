"""Backend discovery: turn a configured address into the addresses of every backend behind it."""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger(__name__)


def resolve(address: str) -> list[str]:
    """``dns:///host:port`` -> every address the name resolves to (a Kubernetes headless service lists
    one per pod); anything else is taken as one host:port."""
    if not address.startswith("dns:"):
        return [address]
    target = address.split("///", 1)[-1] if "///" in address else address[4:]
    host, _, port = target.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as exc:
        logger.warning("cannot resolve %s: %s", address, exc)
        return []
    out = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        out.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(set(out))
