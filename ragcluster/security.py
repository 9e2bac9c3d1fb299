"""TLS, peer identities and API keys: the one place every server and channel takes its security from.

- ``ServerTls``: server credentials whose certificate, key and CA are re-read when their files change
  (grpc asks before every new handshake; established connections and in-flight calls are untouched), so
  cert-manager can rotate them without a restart. A half-written or mismatched pair is ignored until it is
  whole (the old one keeps serving).
- ``ClientTls``: channel credentials (CA, optional client certificate for mTLS) for every outgoing channel.
- ``peer_identities``: the identities (URI SANs, e.g. ``spiffe://ragcluster/router``) of the TLS peer, taken
  from the handshake, never from metadata a client could forge.
- ``TokenStore``: API keys with roles (read < write < admin) from a file of hashes, re-read on change,
  compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from ragcluster.errors import InvalidArgument, PermissionDenied, Unauthenticated

logger = logging.getLogger(__name__)

ROLES = ("read", "write", "admin")
AUTH_METADATA_KEY = "authorization"
SPIFFE_PREFIX = "spiffe://ragcluster/"


def identity(role: str, shard: int | None = None) -> str:
    """The identity (URI SAN) of a process: ``spiffe://ragcluster/router``, ``spiffe://ragcluster/shard/3``..."""
    return SPIFFE_PREFIX + role + ("" if shard is None else f"/{shard}")


ROUTER_IDENTITY = identity("router")


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(?::[^@/\s]*)?@")


def redact_url(text: str) -> str:
    """``postgresql://user:secret@db/x`` -> ``postgresql://user:***@db/x`` anywhere in ``text`` (for errors and
    logs: credentials in database URLs never leave the process)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (a server there is reachable from this machine only)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _stamp(paths: Iterable[str]) -> tuple[tuple[str, int | None, int | None, int | None], ...]:
    out: list[tuple[str, int | None, int | None, int | None]] = []
    for p in paths:
        try:
            st = os.stat(p)  # follows symlinks: Kubernetes swaps a ..data symlink on Secret updates
            out.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((p, None, None, None))
    return tuple(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """Raise ValueError unless ``key_pem`` is the private key of the first certificate in ``cert_pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise ValueError("private key does not match the certificate")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a process's certificate chain, private key and trusted CA bundle (PEM)."""

    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def check(self, server: bool) -> None:
        if bool(self.cert) != bool(self.key):
            raise InvalidArgument("tls: --tls-cert and --tls-key go together")
        if server and self.enabled and not self.cert:
            raise InvalidArgument("tls: a server needs --tls-cert and --tls-key")
        for name, path in (("tls-cert", self.cert), ("tls-key", self.key), ("tls-ca", self.ca)):
            if path and not Path(path).is_file():
                raise InvalidArgument(f"{name}: no such file: {path}")


class ServerTls:
    """Server credentials that follow the files: checked before each new TLS handshake (at most every
    ``min_interval`` seconds), swapped in once the new pair is complete and consistent."""

    def __init__(self, files: TlsFiles, require_client_auth: bool, min_interval: float = 1.0):
        files.check(server=True)
        self.files = files
        self.require_client_auth = require_client_auth and bool(files.ca)
        self.min_interval = min_interval
        self.reloads = 0
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = _stamp(self._paths())
        self._initial = self._load()

    def _paths(self) -> list[str]:
        return [p for p in (self.files.cert, self.files.key, self.files.ca) if p]

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = _read(self.files.cert), _read(self.files.key)
        check_pair(cert, key)
        ca = _read(self.files.ca) if self.files.ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate_configuration_fetcher: a new configuration when the files changed, else None."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.min_interval:
                return None
            self._checked = now
            stamp = _stamp(self._paths())
            if stamp == self._stamp:
                return None
            try:
                config = self._load()
            except Exception as exc:  # half-written or mismatched: keep serving the old pair, retry later
                logger.warning("TLS files changed but are not usable yet (%s); keeping the current certificate",
                               type(exc).__name__)
                return None
            self._stamp = stamp
            self.reloads += 1
            logger.info("TLS certificate reloaded from %s", self.files.cert)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)  # None = keep the current one
        return grpc.dynamic_ssl_server_credentials(self._initial, fetch,
                                                   require_client_authentication=self.require_client_auth)


class ClientTls:
    """Credentials for outgoing channels: trust ``ca``; present ``cert``/``key`` (mTLS) when given.

    ``token``: an API key sent as ``authorization: Bearer ...`` on every call (only over TLS)."""

    def __init__(self, files: TlsFiles | None = None, token: str = "", server_name: str = ""):
        self.files = files or TlsFiles()
        self.files.check(server=False)
        self.token = token
        self.server_name = server_name  # override the name checked against the server certificate

    @property
    def enabled(self) -> bool:
        return self.files.enabled

    def paths(self) -> list[str]:
        """The files the credentials are read from (watched for rotation by ragcluster.channels)."""
        return [p for p in (self.files.cert, self.files.key, self.files.ca) if p]

    def stamp(self) -> tuple:
        """Changes whenever one of ``paths()`` is replaced or rewritten."""
        return _stamp(self.paths())

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials from the files as they are now (a certificate and a key that do not belong together,
        e.g. read half way through a rotation, raise ValueError)."""
        if not self.enabled:
            return None
        f = self.files
        cert, key = (_read(f.cert), _read(f.key)) if f.cert else (None, None)
        if cert is not None and key is not None:
            check_pair(cert, key)
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(f.ca) if f.ca else None, private_key=key, certificate_chain=cert)
        if self.token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(self.token))
        return creds


def peer_identities(context: Any) -> list[str]:
    """URI SANs of the caller's verified TLS certificate (empty without TLS or without a client cert)."""
    try:
        auth = context.auth_context()
    except Exception:  # not every context (e.g. in-process fakes) has one
        return []
    values = auth.get("peer_uri", []) if isinstance(auth, Mapping) else []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def transport_is_tls(context: Any) -> bool:
    try:
        auth = context.auth_context()
    except Exception:
        return False
    return auth.get("transport_security_type", [b""])[0] == b"ssl"


class PeerPolicy:
    """Which TLS identities may call which methods: ``{method: {identity, ...}}`` plus a default set.

    With TLS off (loopback development, explicit --insecure) there is no peer certificate and nothing to
    check: the policy is then ``None`` at the server."""

    def __init__(self, default: Iterable[str], per_method: Mapping[str, Iterable[str]] | None = None):
        self.default = frozenset(default)
        self.per_method = {m: frozenset(ids) for m, ids in (per_method or {}).items()}

    def check(self, method: str, context: Any) -> None:
        allowed = self.per_method.get(method, self.default)
        ids = peer_identities(context)
        if not ids:
            raise Unauthenticated("a client certificate is required")
        if not allowed.intersection(ids):
            raise PermissionDenied(f"{method}: this certificate's identity may not call it")


# --- API keys --------------------------------------------------------------------------------------

def hash_token(token: str) -> str:
    """What the key file stores: ``sha256:HEX`` (API keys are 256-bit random strings: no salt needed)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Key:
    digest: bytes
    role: str
    name: str


def parse_token_file(text: str, where: str = "tokens") -> list[_Key]:
    """Lines ``sha256:HEX ROLE [NAME]``; ``#`` comments and blank lines ignored."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith("sha256:") or parts[1] not in ROLES:
            raise InvalidArgument(f"{where}:{n}: expected 'sha256:HEX ROLE [NAME]' with ROLE in {'/'.join(ROLES)}")
        try:
            digest = bytes.fromhex(parts[0][len("sha256:"):])
        except ValueError:
            raise InvalidArgument(f"{where}:{n}: not a hex SHA-256") from None
        if len(digest) != 32:
            raise InvalidArgument(f"{where}:{n}: not a SHA-256 (32 bytes)")
        keys.append(_Key(digest, parts[1], parts[2] if len(parts) > 2 else f"key{n}"))
    return keys


class TokenStore:
    """API keys from a file (or a mounted Kubernetes Secret: a directory whose files are read in order),
    re-read when it changes (checked at most every ``min_interval`` seconds). A broken update is logged and
    the previous keys stay in force."""

    def __init__(self, path: str, min_interval: float = 1.0):
        self.path = path
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple = ()
        self._keys: list[_Key] = []
        self.reloads = 0
        self._reload(initial=True)

    def _files(self) -> list[str]:
        p = Path(self.path)
        if p.is_dir():
            return sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return [self.path]

    def _reload(self, initial: bool = False) -> None:
        files = self._files()
        stamp = _stamp(files)
        if stamp == self._stamp:
            return
        try:
            keys = [k for f in files for k in parse_token_file(_read(f).decode("utf-8"), Path(f).name)]
        except (OSError, UnicodeDecodeError, InvalidArgument) as exc:
            if initial:
                raise InvalidArgument(f"auth-tokens: {exc}") from None
            logger.warning("API key file changed but cannot be read (%s); keeping the previous keys", exc)
            return
        self._keys, self._stamp = keys, stamp
        if not initial:
            self.reloads += 1
            logger.info("API keys reloaded: %d keys", len(keys))

    def maybe_reload(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.min_interval:
                self._checked = now
                self._reload()

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, or None. Every stored hash is compared (constant time, no early exit)."""
        self.maybe_reload()
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        role = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                role = key.role
        return role


class TokenPolicy:
    """Role each method needs; the caller's role comes from its bearer token."""

    def __init__(self, store: TokenStore, required: Mapping[str, str], default_role: str = "admin"):
        self.store = store
        self.required = dict(required)
        self.default_role = default_role  # methods not listed need admin: new RPCs are closed until classified

    def check(self, method: str, metadata: Mapping[str, str]) -> None:
        header = metadata.get(AUTH_METADATA_KEY, "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        role = self.store.role_of(token.strip())
        if role is None:
            raise Unauthenticated("invalid API key")
        need = self.required.get(method, self.default_role)
        if ROLES.index(role) < ROLES.index(need):
            raise PermissionDenied(f"{method} needs the {need} role")


Authorizer = Callable[[str, Mapping[str, str], Any], None]
"""(method, invocation metadata, servicer context) -> None; raises Unauthenticated / PermissionDenied."""


def combine(peer: PeerPolicy | None = None, tokens: TokenPolicy | None = None) -> Authorizer | None:
    if peer is None and tokens is None:
        return None

    def authorize(method: str, metadata: Mapping[str, str], context: Any) -> None:
        if peer is not None:
            peer.check(method, context)
        if tokens is not None:
            tokens.check(method, metadata)

    return authorize
