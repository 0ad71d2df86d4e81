"""``fedseg flower renew-certs``: a new SuperLink certificate signed by the kept CA (or a hospital's own).

Registered on the ``fedseg flower`` group by :mod:`fedseg.cli.main`; docs/deployment.md, "Renewing
certificates" and "A hospital's own CA".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["renew_certs"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def renew_certs(
    out_dir: Annotated[Path, typer.Argument(help="the folder of `fedseg flower certs` (server.pem and server.key "
                                                 "are replaced)")],
    host: Annotated[list[str], typer.Option(
        "--host", help="a DNS name or IP under which the sites reach the SuperLink (repeat; localhost and "
                       "127.0.0.1 are always added)")],
    days: Annotated[int, typer.Option(help="validity in days (never past the CA's own expiry)")] = 365,
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", help="sign with this CA certificate (PEM), e.g. the hospital's own; default OUT_DIR/ca.crt")] = None,
    ca_key: Annotated[Path | None, typer.Option(
        "--ca-key", help="the CA's private key (PEM, unencrypted); default OUT_DIR/ca.key")] = None,
) -> None:
    """Renew the SuperLink's TLS certificate, keeping the CA: the sites' ca.crt stays valid."""
    from fedseg.runtime.flower.certs import CertificateError, renew_server_certificate

    if (ca_cert is None) != (ca_key is None):
        err_console.print("[bold red]error:[/] give --ca-cert and --ca-key together (or neither: OUT_DIR/ca.*)")
        raise typer.Exit(2)
    try:
        files = renew_server_certificate(out_dir, host, days=days, ca_cert=ca_cert, ca_key=ca_key)
    except CertificateError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None  # the files named cannot sign: a usage error (fedseg -h)
    console.print(f"SuperLink certificate for {', '.join(files.hosts)} signed by {files.ca_cert}:")
    console.print(f"  {files.server_cert}\n  {files.server_key}  (mode 0600)")
    console.print("Replace them on the SuperLink machine and restart it; the sites keep their CA certificate.")
