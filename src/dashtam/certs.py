"""The dev environment's self-signed TLS certificate: the API and the callback server serve HTTPS with it.

    python -m dashtam.certs [--force] [DIR]     # DIR defaults to .dashtam/certs of the current folder

makes, in DIR (created mode 0700), `key.pem` (an EC P-256 private key, mode 0600) and `cert.pem` (self-signed,
for `localhost`, `127.0.0.1` and `::1`, valid a year). A certificate already there is kept while it is valid
for another 30 days and matches its key; else, or with --force, both are made anew. Clients trust `cert.pem`
itself (the callback server through API_CA_FILE; a browser by importing it or clicking through). The key is
never printed; the command prints where the files are and until when the certificate is valid.

`dashtam-env up dev` runs this (as a subprocess: the plugin imports neither this package nor cryptography) and
passes the files to uvicorn's --ssl-keyfile / --ssl-certfile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DIR = Path(".dashtam") / "certs"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")
VALID_FOR = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


class CertificateError(Exception):
    """The certificate folder cannot be used safely (another user's, not a folder)."""


@dataclass(frozen=True)
class DevCertificate:
    key_file: Path
    cert_file: Path
    not_after: dt.datetime
    made: bool


def ensure_certificate(directory: Path, *, force: bool = False) -> DevCertificate:
    """The folder's key and certificate, made when missing, invalid soon, mismatched, or `force`d."""
    directory = _private_directory(directory)
    key_file, cert_file = directory / KEY_FILE, directory / CERT_FILE
    if not force:
        kept = _usable(key_file, cert_file)
        if kept is not None:
            return DevCertificate(key_file, cert_file, kept, made=False)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key)
    # Written under temporary names, then renamed: a reader never sees half a file, and the key is 0600 from
    # its first byte (os.open's mode, then fchmod whatever the umask).
    _write(
        key_file,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        mode=0o600,
    )
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return DevCertificate(key_file, cert_file, cert.not_valid_after_utc, made=True)


def _private_directory(directory: Path) -> Path:
    """The folder, created 0700, or tightened to 0700 when it is ours: the key is never in a readable place."""
    directory = directory.absolute()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise CertificateError(f"{directory} is not a folder; give another one (python -m dashtam.certs DIR)")
    if info.st_uid != os.getuid():
        raise CertificateError(
            f"{directory} belongs to uid {info.st_uid}, not to you ({os.getuid()}); the key must live in a "
            "folder of your own: remove it or give another one (python -m dashtam.certs DIR)"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        directory.chmod(0o700)
    return directory


def _usable(key_file: Path, cert_file: Path) -> dt.datetime | None:
    """The certificate's expiry when key and certificate are ours to keep, else None (make new ones)."""
    try:
        key_info = key_file.lstat()
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not stat.S_ISREG(key_info.st_mode) or key_info.st_uid != os.getuid():
        return None
    if stat.S_IMODE(key_info.st_mode) != 0o600:
        key_file.chmod(0o600)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != cert.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        return None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    wanted = {*DNS_NAMES, *IP_ADDRESSES}
    if not wanted <= {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}:
        return None
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return None
    return cert.not_valid_after_utc


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dashtam development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    # A leaf that is its own trust anchor: the extensions OpenSSL's strict verification (Python 3.13's default
    # VERIFY_X509_STRICT) and browsers expect of a server certificate.
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashtam.certs",
        description="Make the dev environment's self-signed TLS key and certificate (localhost, 127.0.0.1).",
    )
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    parser.add_argument("--force", action="store_true", help="make new ones even if a valid certificate is there")
    args = parser.parse_args(argv)
    try:
        made = ensure_certificate(args.directory, force=args.force)
    except (CertificateError, OSError) as exc:
        print(f"dashtam.certs: error: {exc}", file=sys.stderr)
        return 2
    what = "made a self-signed certificate" if made.made else "kept the certificate"
    print(
        f"dashtam.certs: {what} for {', '.join((*DNS_NAMES, *IP_ADDRESSES))} in {made.cert_file.parent} "
        f"({CERT_FILE}; {KEY_FILE} mode 0600), valid until {made.not_after:%Y-%m-%d}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
