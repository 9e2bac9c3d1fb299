"""Certificate material for a local cluster (like ``cockroach cert``): a CA, one certificate per process with
its identity as a URI SAN (``spiffe://ragcluster/router``, ``spiffe://ragcluster/shard/0``, ...), and an
admin API token. ``ragcluster up`` creates it in ``DATA_DIR/certs`` on first start and reuses it after.

Layout of ``DATA_DIR/certs``:
  ca.crt ca.key                 the local CA (the key never leaves this directory)
  NAME.crt NAME.key             one pair per process (router, shard-0-r0, generator-0, ...)
  admin.token                   the admin API key, for the CLI (mode 0600)
  tokens                        the router's key file: ``sha256:HEX ROLE NAME`` per line (hashes only)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ragcluster.fsutil import atomic_write
from ragcluster.security import hash_token, identity

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
CA_FILE, CA_KEY_FILE = "ca.crt", "ca.key"
ADMIN_TOKEN_FILE, TOKENS_FILE = "admin.token", "tokens"


__all__ = ["LocalCerts", "add_token", "create_ca", "ensure_local_certs", "identity", "issue", "new_token"]


def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(directory: Path, common_name: str = "ragcluster local CA", days: int = 3650) -> tuple[Path, Path]:
    """A self-signed CA: ``directory/ca.crt`` and ``directory/ca.key``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY_FILE, _key_pem(key))
    atomic_write(directory / CA_FILE, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_FILE, directory / CA_KEY_FILE


@dataclass
class Issued:
    cert: Path
    key: Path


def issue(ca_dir: Path, out_dir: Path, name: str, uri: str, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS,
          days: float = 365, not_before: datetime.datetime | None = None) -> Issued:
    """A leaf certificate signed by the CA in ``ca_dir``, valid as server and client (mTLS), written to
    ``out_dir/NAME.crt`` and ``NAME.key``. ``uri`` is the identity (URI SAN) peers check; ``hosts`` are the DNS
    names / IP addresses clients dial. ``days`` may be negative with ``not_before`` in the past (expired certs
    for tests)."""
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri.rsplit("/", 1)[-1] if uri else name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # key first: a reader that sees the new certificate finds its key already in place
    _write_private(out_dir / f"{name}.key", _key_pem(key))
    atomic_write(out_dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return Issued(out_dir / f"{name}.crt", out_dir / f"{name}.key")


def new_token() -> str:
    """A fresh API key (URL-safe, 256 bits of entropy)."""
    return "rc_" + secrets.token_urlsafe(32)


def add_token(tokens_file: Path, token: str, role: str, name: str) -> None:
    """Append a key to the router's key file (only its hash is stored)."""
    tokens_file = Path(tokens_file)
    existing = tokens_file.read_text() if tokens_file.exists() else ""
    _write_private(tokens_file, (existing + f"{hash_token(token)} {role} {name}\n").encode())


@dataclass
class LocalCerts:
    """What ``ragcluster up`` runs with: paths inside ``DATA_DIR/certs``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / CA_FILE

    @property
    def admin_token(self) -> Path:
        return self.dir / ADMIN_TOKEN_FILE

    @property
    def tokens(self) -> Path:
        return self.dir / TOKENS_FILE

    def pair(self, name: str) -> Issued:
        return Issued(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def ensure(self, name: str, uri: str, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS) -> Issued:
        """The certificate of process ``name``, issued on first use."""
        pair = self.pair(name)
        if pair.cert.exists() and pair.key.exists():
            return pair
        return issue(self.dir, self.dir, name, uri, hosts)


def ensure_local_certs(data_dir: Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS) -> LocalCerts:
    """``DATA_DIR/certs`` with a CA and an admin token, created on first start, reused afterwards."""
    certs = LocalCerts(Path(data_dir) / "certs")
    if not certs.ca.exists():
        create_ca(certs.dir)
    if not certs.admin_token.exists():
        token = new_token()
        add_token(certs.tokens, token, "admin", "admin")
        _write_private(certs.admin_token, (token + "\n").encode())
    certs.ensure("client", identity("client"), hosts)
    return certs
