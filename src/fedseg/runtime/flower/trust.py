"""What a site runs: only the operator's fedseg app (checked before anything of it is installed).

A SuperNode runs whatever app its SuperLink hands it. fedseg's sites run ClientApp tasks in the
long-lived ``fedseg flower clientapp`` process (``--isolation process``), which checks every
task's app (FAB) and run config here first and answers a refused one with an error reply,
without installing, importing or running anything of it, and without reading the message:

* **a fedseg app, nothing else** (:func:`check_fab`): the FAB holds only ``pyproject.toml`` and
  ``fedseg.yaml`` (no code that could shadow an installed module), its publisher is ``fedseg`` and
  its components are exactly fedseg's ServerApp and ClientApp (``project.APP_COMPONENTS``);
* **the operator's** (:func:`check_signature`, when the site holds the operator's public key):
  the run config's ``fedseg-config`` carries a valid Ed25519 signature (``fedseg-signature``) made
  by ``fedseg flower app --sign-key`` with the operator's private key. A run config overridden at
  submission (``flwr run --run-config``) is checked as the site receives it.

Flower 1.42's own app verification (``flower-supernode --trusted-entities``) accepts only FABs
that the Flower platform signed (``valid_license``), so a self-hosted federation cannot use it.
"""

from __future__ import annotations

import base64
import io
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.project import APP_COMPONENTS, APP_FILES, APP_NAME, APP_PUBLISHER

__all__ = ["AppRefused", "check_fab", "check_signature", "sign_config", "load_signing_key", "load_trusted_keys",
           "make_signing_key"]

_FAB_FILES = frozenset({*APP_FILES, ".info/CONTENT"})
_DOMAIN = b"fedseg-app-signature-v1\n"


class AppRefused(RuntimeError):
    """A task's app is not the operator's fedseg app; the message says what did not match."""


def check_fab(content: bytes) -> dict[str, Any]:
    """The FAB's ``pyproject.toml`` as a mapping, if the FAB is a fedseg app and nothing else.

    Raises:
        AppRefused: not a zip, a file other than ``pyproject.toml``/``fedseg.yaml`` (e.g. code),
            another publisher, name or components.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = fab.namelist()
            extra = sorted(set(names) - _FAB_FILES)
            if extra:
                raise AppRefused(f"the app holds files a fedseg app never has: {', '.join(extra[:5])} "
                                 f"(allowed: {', '.join(sorted(APP_FILES))})")
            pyproject = tomllib.loads(fab.read("pyproject.toml").decode())
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppRefused(f"the app is not a readable Flower app (FAB): {type(exc).__name__}: {exc}") from exc
    app = pyproject.get("tool", {}).get("flwr", {}).get("app", {})
    found = {"publisher": app.get("publisher"), "name": pyproject.get("project", {}).get("name"),
             "components": app.get("components")}
    want = {"publisher": APP_PUBLISHER, "name": APP_NAME, "components": APP_COMPONENTS}
    wrong = [f"{k} {found[k]!r} (a fedseg app has {want[k]!r})" for k in want if found[k] != want[k]]
    if wrong:
        raise AppRefused("the app is not fedseg's: " + "; ".join(wrong))
    return pyproject


def _payload(config_text: str) -> bytes:
    return _DOMAIN + config_text.encode()


def sign_config(config_text: str, key: Ed25519PrivateKey) -> str:
    """The base64 Ed25519 signature of a ``fedseg-config`` text (the run config's :attr:`RunKey.SIGNATURE`)."""
    return base64.b64encode(key.sign(_payload(config_text))).decode()


def check_signature(run_config: Mapping[str, Any], trusted: Sequence[Ed25519PublicKey]) -> None:
    """Accept the run config only if one of the ``trusted`` keys signed its ``fedseg-config``.

    Raises:
        AppRefused: no config, no signature, or no trusted key verifies it.
    """
    text = run_config.get(RunKey.CONFIG.value)
    signature = run_config.get(RunKey.SIGNATURE.value)
    if not isinstance(text, str) or not isinstance(signature, str) or not signature:
        raise AppRefused(f"the run is not signed ({RunKey.SIGNATURE.value!r} missing); this site runs only apps "
                         "written with `fedseg flower app --sign-key` by the federation's operator")
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError as exc:
        raise AppRefused(f"{RunKey.SIGNATURE.value!r} is not base64: {exc}") from exc
    for key in trusted:
        try:
            key.verify(raw, _payload(text))
            return
        except InvalidSignature:
            continue
    raise AppRefused(f"the run's {RunKey.SIGNATURE.value!r} is not valid for any of this site's "
                     f"{len(trusted)} trusted operator key(s) (--trusted-app-key): refused")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 private key (OpenSSH or PEM, unencrypted).

    Raises:
        ValueError: unreadable, or not an Ed25519 private key (the message names the file).
    """
    try:
        data = path.expanduser().read_bytes()
        key = (serialization.load_ssh_private_key(data, password=None) if b"OPENSSH" in data
               else serialization.load_pem_private_key(data, password=None))
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"app signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"app signing key {path}: an Ed25519 key is needed, got {type(key).__name__}")
    return key


def load_trusted_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    """The operator public keys a site trusts (OpenSSH ``ssh-ed25519 ...`` lines, one or more per file).

    Raises:
        ValueError: a file is unreadable, holds no key, or a key that is not Ed25519.
    """
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        try:
            lines = [ln for ln in path.expanduser().read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            loaded = [serialization.load_ssh_public_key(ln.encode()) for ln in lines]
        except (OSError, ValueError, UnicodeDecodeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"trusted app key {path}: {exc}") from exc
        if not loaded:
            raise ValueError(f"trusted app key {path}: no key in the file")
        for key in loaded:
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"trusted app key {path}: an ssh-ed25519 key is needed, got {type(key).__name__}")
            keys.append(key)
    return keys


def make_signing_key() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private key, OpenSSH format; public key, one ``ssh-ed25519`` line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b" fedseg-app-signing\n"
