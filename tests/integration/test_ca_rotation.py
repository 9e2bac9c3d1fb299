"""CA changes without failed calls, as the README (Security, "CA rotation") and the Helm chart rely on them,
against a real shard process over mTLS (it re-reads its --tls-ca file on change):

- renewing a CA certificate with the SAME key (the chart's bootstrapped CA: rotationPolicy Never) changes
  nothing for trust: certificates signed before and after verify against the old and the renewed CA
  certificate alike, in any mix;
- a CA with a NEW key (same name) is refused until the peer trusts it; a bundle of the old and the new CA
  accepts certificates of both, which is what lets the tiers move over one by one."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ragcluster.fsutil import atomic_write
from ragcluster.security import TlsFiles, identity
from ragcluster.tools.certs import issue
from ragcluster.tools.cluster import ServerProcess
from tests.helpers import Pki
from tests.integration.test_security import shard_info


def _renewed_ca(ca_dir: Path, out_dir: Path, same_key: bool) -> Path:
    """A new certificate for the CA in ``ca_dir`` (same subject, new serial and validity), with the CA's key or a
    new one, written with its key to ``out_dir`` (ca.crt, ca.key) so that it can issue certificates too."""
    old = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    if not same_key:
        key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=90)))
    for ext in old.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(value, critical=ext.critical)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ca.crt").write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (out_dir / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    os.chmod(out_dir / "ca.key", 0o600)
    return out_dir / "ca.crt"


def _trust(files: TlsFiles, ca: str) -> TlsFiles:
    return TlsFiles(files.cert, files.key, ca)


def _eventually(address: str, files: TlsFiles, want: grpc.StatusCode, seconds: float = 30.0) -> grpc.StatusCode:
    """The shard re-reads its CA file at most once a second: ask until it answers ``want`` (bounded)."""
    got = grpc.StatusCode.UNKNOWN
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = shard_info(address, files, timeout=10)
        if got == want:
            return got
        time.sleep(0.2)
    return got


@pytest.fixture
def shard(tmp_path):
    pki = Pki(tmp_path / "pki")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pki.ca, run / "trust.crt")  # the shard's --tls-ca, replaced by the tests
    files = TlsFiles(pki.shard0.cert, pki.shard0.key, str(run / "trust.crt"))
    proc = ServerProcess("shard_server", ["--port", "0", "--shard-id", "0", "--dim", "4", "--data-dir", str(run / "d"),
                                          "--checkpoint-interval-seconds", "0", *Pki.args(files)], run, "s0")
    proc.wait_ready(120)
    yield proc, pki, run / "trust.crt"
    proc.terminate()


def test_renewal_with_the_same_key_keeps_every_certificate_trusted(shard, tmp_path):
    proc, pki, trust = shard
    renewed = _renewed_ca(pki.dir, tmp_path / "renewed", same_key=True)
    after = issue(tmp_path / "renewed", tmp_path / "after", "router", identity("router"))  # signed after renewal
    before_router = pki.router
    after_router = TlsFiles(str(after.cert), str(after.key), pki.ca)
    # the shard still trusts the old CA certificate: a certificate issued after the renewal is accepted
    assert shard_info(proc.grpc, after_router) == grpc.StatusCode.OK
    # the shard moves to the renewed CA certificate alone: certificates from before are still accepted, and
    # clients that trust either CA certificate accept the shard's (issued before the renewal)
    # (the file also lists an unrelated CA, only to see when the shard has re-read it: its certificate is
    # accepted from then on; the old CA certificate is not in it)
    atomic_write(trust, renewed.read_bytes() + (pki.other / "ca.crt").read_bytes())
    assert _eventually(proc.grpc, pki.foreign, grpc.StatusCode.OK) == grpc.StatusCode.OK
    clients = [before_router, after_router, _trust(before_router, str(renewed)), _trust(after_router, str(renewed))]
    for client in clients:
        assert shard_info(proc.grpc, client) == grpc.StatusCode.OK, client


def test_a_new_key_needs_a_bundle_of_both_cas(shard, tmp_path):
    proc, pki, trust = shard
    new_ca = _renewed_ca(pki.dir, tmp_path / "new", same_key=False)  # same name, new key
    new = issue(tmp_path / "new", tmp_path / "new-router", "router", identity("router"))
    new_router = TlsFiles(str(new.cert), str(new.key), pki.ca)
    # without the bundle a tier already on the new CA is refused by one that trusts only the old
    assert shard_info(proc.grpc, new_router) == grpc.StatusCode.UNAVAILABLE
    # the bundle (old + new), as tls.trustBundle mounts it: both generations are accepted
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(Path(pki.ca).read_bytes() + new_ca.read_bytes())
    atomic_write(trust, bundle.read_bytes())
    assert _eventually(proc.grpc, new_router, grpc.StatusCode.OK) == grpc.StatusCode.OK
    assert shard_info(proc.grpc, pki.router) == grpc.StatusCode.OK
    assert shard_info(proc.grpc, _trust(new_router, str(bundle))) == grpc.StatusCode.OK
    # the old CA leaves the bundle only once every tier holds a new certificate: after that the old one is refused
    atomic_write(trust, new_ca.read_bytes())
    assert _eventually(proc.grpc, pki.router, grpc.StatusCode.UNAVAILABLE) == grpc.StatusCode.UNAVAILABLE
