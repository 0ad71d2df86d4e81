"""Certificates and SuperNode keys for a Flower deployment, made with ``cryptography``.

* a private certificate authority (``ca.crt``, ``ca.key``) that every participant trusts;
* the SuperLink's TLS certificate (``server.pem``, ``server.key``) signed by it, valid for the
  host names and IP addresses the SuperNodes and the ``flwr`` CLI use to reach the SuperLink
  (``localhost`` and ``127.0.0.1`` are always included, for the ServerApp on the same machine);
* one EC key pair per SuperNode for Flower's SuperNode authentication (``<name>`` and
  ``<name>.pub``, OpenSSH format as ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` expect);
* the operator's app signing key (``app-signing.key``, Ed25519, secret: stays with the operator;
  ``app-signing.pub``: every site), with which ``fedseg flower app --sign-key`` signs each run's
  configuration and each site's ``fedseg flower clientapp --trusted-app-key`` checks it.

Private keys are written with mode 0600 and never overwritten unless asked.
:func:`renew_server_certificate` replaces only the SuperLink's certificate and key, signed by the
kept CA (or by a hospital's own CA), so the sites' ``ca.crt`` stays valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateFiles", "CertificateError", "make_certificates", "renew_server_certificate",
           "make_supernode_keys", "make_app_signing_key", "APP_SIGNING_KEY"]

_ALWAYS = ("localhost", "127.0.0.1")
_CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(ValueError):
    """A file would be overwritten, or a host name is not usable in a certificate."""


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the files :func:`make_certificates` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...] = ()
    """The names and addresses in the SuperLink certificate's subjectAltName, in order."""


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CertificateError(f"{path} exists; pass --overwrite to replace it (and re-distribute the CA)")
    from fedseg.io.atomic import atomic_open  # temp file + fsync + rename

    with atomic_open(path) as fh:
        if private:  # before any byte is written: a key is never readable by others, not even half-written
            os.chmod(fh.fileno(), 0o600)
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_hosts(hosts: Sequence[str]) -> list[str]:
    """``hosts`` then ``localhost``/``127.0.0.1``, stripped, without repeats."""
    return list(dict.fromkeys(h.strip() for h in [*hosts, *_ALWAYS]))


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in _san_hosts(hosts):
        if not host or "/" in host or " " in host:
            raise CertificateError(f"host {host!r} is not a DNS name or IP address")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(
    out_dir: Path, hosts: Sequence[str], *, days: int = 365, overwrite: bool = False
) -> CertificateFiles:
    """Create a CA and a SuperLink certificate for ``hosts`` in ``out_dir``.

    Args:
        out_dir: created if missing.
        hosts: DNS names and/or IP addresses under which the SuperLink is reached.
        days: validity of both certificates.
        overwrite: replace existing files.

    Returns:
        The written paths. Give ``ca.crt`` to every SuperNode and ``flwr`` user; ``server.pem`` and
        ``server.key`` stay on the SuperLink machine; keep ``ca.key`` offline.
    """
    if days < 1:
        raise CertificateError(f"days must be >= 1, got {days}")
    files = CertificateFiles(out_dir / "ca.crt", out_dir / "ca.key", out_dir / "server.pem", out_dir / "server.key",
                             tuple(_san_hosts(hosts)))
    if not overwrite:
        for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
            if path.exists():
                raise CertificateError(f"{path} exists; pass --overwrite to replace it (and re-distribute the CA)")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedseg federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key, server_cert = _server_certificate(ca_cert, ca_key, hosts, now, until)

    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite)
    _write(files.ca_key, _key_pem(ca_key), private=True, overwrite=overwrite)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False,
           overwrite=overwrite)
    _write(files.server_key, _key_pem(server_key), private=True, overwrite=overwrite)
    return files


def _server_certificate(ca_cert: x509.Certificate, ca_key: _CAKey, hosts: Sequence[str], now: dt.datetime,
                        until: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new SuperLink key and its certificate for ``hosts``, signed by the CA."""
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(hosts) or ["localhost"])[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return server_key, server_cert


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _CAKey]:
    """A CA certificate and its private key (PEM, unencrypted), checked to belong together.

    Raises:
        CertificateError: a file is missing or unreadable, the certificate is not a CA, the key is
            not an EC or RSA key, or it is not the certificate's key.
    """
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CertificateError(f"{path}: no such file (the CA certificate and its key, PEM)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{cert_path} / {key_path}: not a PEM certificate and unencrypted PEM key ({exc})"
                               ) from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(f"{key_path}: a {type(key).__name__}; the CA key must be an EC or RSA key")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE); give the CA's, "
                               "not a server certificate")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def renew_server_certificate(
    out_dir: Path, hosts: Sequence[str], *, days: int = 365, ca_cert: Path | None = None, ca_key: Path | None = None
) -> CertificateFiles:
    """Issue a new SuperLink certificate and key (``server.pem``, ``server.key``), keeping the CA.

    The sites keep trusting the same ``ca.crt``, so nothing is re-distributed: replace the two
    files on the SuperLink machine and restart it. With ``ca_cert``/``ca_key`` the certificate is
    signed by another CA, e.g. a hospital's or consortium's own (sites then trust that CA's
    certificate as ``--root-certificates``); it is never valid past the CA's own expiry.

    Args:
        out_dir: where ``server.pem`` and ``server.key`` are replaced (and, by default, the CA is read).
        hosts: DNS names and/or IP addresses of the SuperLink (``localhost``, ``127.0.0.1`` added).
        days: validity of the new certificate.
        ca_cert, ca_key: the CA to sign with (default: ``out_dir/ca.crt`` and ``out_dir/ca.key``).

    Raises:
        CertificateError: see :func:`_load_ca`, or ``days`` < 1.
    """
    if days < 1:
        raise CertificateError(f"days must be >= 1, got {days}")
    cert_path, key_path = ca_cert or out_dir / "ca.crt", ca_key or out_dir / "ca.key"
    ca, key = _load_ca(cert_path, key_path)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = min(now + dt.timedelta(days=days), ca.not_valid_after_utc)
    if until <= now:
        raise CertificateError(f"the CA {cert_path} expired on {ca.not_valid_after_utc:%Y-%m-%d}; make a new CA "
                               "(fedseg flower certs --overwrite) and re-distribute it")
    server_key, server_cert = _server_certificate(ca, key, hosts, now, until)
    files = CertificateFiles(cert_path, key_path, out_dir / "server.pem", out_dir / "server.key",
                             tuple(_san_hosts(hosts)))
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=True)
    _write(files.server_key, _key_pem(server_key), private=True, overwrite=True)
    return files


def make_supernode_keys(out_dir: Path, names: Sequence[str], *, overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """One EC (P-384) key pair per SuperNode name, OpenSSH format: ``<name>`` and ``<name>.pub``.

    Returns:
        name -> (private key path, public key path). The private key stays on the site; the
        public key is registered on the SuperLink with ``flwr supernode register``.
    """
    out: dict[str, tuple[Path, Path]] = {}
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise CertificateError(f"SuperNode key name {name!r}: use a plain file name such as the site name")
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        priv_path, pub_path = out_dir / name, out_dir / f"{name}.pub"
        _write(priv_path, private, private=True, overwrite=overwrite)
        _write(pub_path, public + b"\n", private=False, overwrite=overwrite)
        out[name] = (priv_path, pub_path)
    return out


APP_SIGNING_KEY = "app-signing"
"""File stem of the operator's app signing key pair (``app-signing.key``, ``app-signing.pub``)."""


def make_app_signing_key(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """The operator's Ed25519 app signing key pair: (``app-signing.key``, ``app-signing.pub``).

    Raises:
        CertificateError: a file exists and ``overwrite`` is False.
    """
    from fedseg.runtime.flower.trust import make_signing_key

    private, public = make_signing_key()
    priv_path, pub_path = out_dir / f"{APP_SIGNING_KEY}.key", out_dir / f"{APP_SIGNING_KEY}.pub"
    _write(priv_path, private, private=True, overwrite=overwrite)
    _write(pub_path, public, private=False, overwrite=overwrite)
    return priv_path, pub_path
