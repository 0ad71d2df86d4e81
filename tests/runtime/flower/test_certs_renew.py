"""``fedseg flower renew-certs``: a new SuperLink certificate, the CA kept (or a hospital's own CA)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from fedseg.cli.main import app
from fedseg.runtime.flower.certs import make_certificates

runner = CliRunner()


def _signed_by(cert_path: Path, ca_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError):
        return False
    return True


def test_renewal_keeps_the_ca_and_replaces_the_server_certificate(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ["superlink.example.org"], days=30)
    ca_before, old_cert = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    result = runner.invoke(app, ["flower", "renew-certs", str(tmp_path), "--host", "superlink.example.org",
                                 "--host", "10.0.0.7", "--days", "90"])
    assert result.exit_code == 0, result.output
    assert files.ca_cert.read_bytes() == ca_before and files.server_cert.read_bytes() != old_cert
    assert _signed_by(files.server_cert, files.ca_cert)
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    san = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "superlink.example.org" in san.get_values_for_type(x509.DNSName)
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_before)
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc  # never past the CA (30 days < 90)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_a_hospitals_own_ca_signs_and_a_server_certificate_is_refused_as_ca(tmp_path: Path) -> None:
    hospital = make_certificates(tmp_path / "hospital", ["pki.hospital"])  # stands for the hospital's own CA
    out = tmp_path / "federation"
    result = runner.invoke(app, ["flower", "renew-certs", str(out), "--host", "superlink", "--ca-cert",
                                 str(hospital.ca_cert), "--ca-key", str(hospital.ca_key)])
    assert result.exit_code == 0, result.output
    assert _signed_by(out / "server.pem", hospital.ca_cert) and not (out / "ca.crt").exists()
    wrong = runner.invoke(app, ["flower", "renew-certs", str(out), "--host", "superlink", "--ca-cert",
                                str(hospital.server_cert), "--ca-key", str(hospital.server_key)])
    assert wrong.exit_code == 2 and "is not a CA certificate" in " ".join(wrong.output.split())
    mismatched = runner.invoke(app, ["flower", "renew-certs", str(out), "--host", "superlink", "--ca-cert",
                                     str(hospital.ca_cert), "--ca-key", str(hospital.server_key)])
    assert mismatched.exit_code == 2 and "is not the key of" in " ".join(mismatched.output.split())
    half = runner.invoke(app, ["flower", "renew-certs", str(out), "--host", "x", "--ca-cert", str(hospital.ca_cert)])
    assert half.exit_code == 2 and "together" in half.output
    missing = runner.invoke(app, ["flower", "renew-certs", str(tmp_path / "none"), "--host", "x"])
    assert missing.exit_code == 2 and "no such file" in missing.output
