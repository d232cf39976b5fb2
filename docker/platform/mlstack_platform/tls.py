"""The HTTPS certificate nginx serves.

If the operator supplies a certificate and key (TLS_CERT_FILE / TLS_KEY_FILE in `.env`), they
are checked and used as they are. Otherwise a private CA is generated once and kept, and it signs
a server certificate for the configured host names; team members trust the CA file
(`scripts/ca-cert`); the CA's key never leaves its own volume, which only the init-secrets
one-shot mounts. The CA may certify the platform's host names (and their subdomains) and its
internal name alone (X.509 name constraints): a user who trusts it trusts it for nothing else.
The server certificate is re-issued from the same CA when it nears expiry or the host names
change within what the CA may certify; a host name outside that needs a new CA, which every
client must then fetch again. The same CA certifies the front door's internal name for jobs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .secrets_store import write_private
from .settings import SettingError

# The front door's name on the jobs network (docker-compose.yml gives nginx this alias there):
# jobs and local workers use it, and trust the platform's CA for it whatever certificate the
# public names use (a .internal name is never public, ICANN 2024).
INTERNAL_HOSTNAME = "mlstack.internal"
CA_DAYS = 3650
SERVER_DAYS = 397  # browsers reject longer-lived server certificates
RENEW_BEFORE = dt.timedelta(days=30)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _constraints(hosts: list[str]) -> x509.NameConstraints:
    permitted: list[x509.GeneralName] = []
    for name in _san(hosts):
        if isinstance(name, x509.IPAddress):
            permitted.append(x509.IPAddress(ipaddress.ip_network(name.value)))
        else:
            permitted.append(name)
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _ca_covers(ca_dir: Path, hosts: list[str]) -> bool:
    """Whether the CA may certify every host (a CA made before name constraints may not: it
    may certify anything, and is replaced)."""
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    try:
        permitted = cert.extensions.get_extension_for_class(x509.NameConstraints).value \
            .permitted_subtrees or []
    except x509.ExtensionNotFound:
        return False
    dns = [n.value.lower() for n in permitted if isinstance(n, x509.DNSName)]
    networks = [n.value for n in permitted if isinstance(n, x509.IPAddress)]
    for name in _san(hosts):
        if isinstance(name, x509.IPAddress):
            if not any(name.value in network for network in networks):
                return False
        elif not any(name.value.lower() == d or name.value.lower().endswith("." + d)
                     for d in dns):
            return False
    return True


def _issue_ca(ca_dir: Path, hosts: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlstack local CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_constraints(hosts), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(ca_dir / "ca.key", _pem_key(key).decode())
    (ca_dir / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue_server(directory: Path, ca_dir: Path, hosts: list[str], name: str = "tls") -> None:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        # The names are in the SANs; a common name that is no host name (a space) is never
        # checked against the CA's name constraints as one (OpenSSL would, for "10.0.0.5").
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlstack front door")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(directory / f"{name}.key", _pem_key(key).decode())
    # nginx serves the chain: server certificate, then the CA.
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    (directory / f"{name}.crt").chmod(0o644)
    if name != "tls":
        return
    # What team members trust (scripts/ca-cert reads it here).
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "ca.crt").chmod(0o644)
    (directory / "source").write_text("generated\n")


def _server_cert_fits(directory: Path, hosts: list[str], name: str = "tls",
                      ca_dir: Path | None = None) -> bool:
    try:
        if name == "tls" and (directory / "source").read_text().strip() != "generated":
            return False
        cert = x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())
        if ca_dir is not None:  # issued by the CA in use (a restored or new CA re-issues)
            ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                return False
    except (FileNotFoundError, ValueError):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san == _san(hosts) and cert.not_valid_after_utc - RENEW_BEFORE > _now()


def _install_user_cert(directory: Path, cert_file: Path, key_file: Path) -> None:
    try:
        certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except ValueError:
        raise SettingError(f"TLS_CERT_FILE: {cert_file} is not a PEM certificate (chain)")
    key_bytes = key_file.read_bytes() if key_file.exists() else b""
    if not key_bytes.strip():
        raise SettingError("TLS_CERT_FILE is set but TLS_KEY_FILE is not: set both in .env")
    try:
        key = serialization.load_pem_private_key(key_bytes, None)
    except (ValueError, TypeError):
        raise SettingError(
            f"TLS_KEY_FILE: {key_file} is not an unencrypted PEM private key "
            "(nginx cannot prompt for a passphrase)"
        )
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise SettingError("TLS_KEY_FILE does not belong to the certificate in TLS_CERT_FILE")
    if certs[0].not_valid_after_utc < _now():
        raise SettingError("TLS_CERT_FILE: the certificate expired on "
                           f"{certs[0].not_valid_after_utc:%Y-%m-%d}")
    write_private(directory / "tls.key", _pem_key(key).decode())  # type: ignore[arg-type]
    shutil.copyfile(cert_file, directory / "tls.crt")
    (directory / "tls.crt").chmod(0o644)
    (directory / "source").write_text("user\n")


def ensure_ca(ca_dir: Path, hosts: list[str]) -> bool:
    """Make a CA exist that may certify `hosts` and the internal name; True when a new one was
    made (every client must then trust it anew)."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    names = [*hosts, INTERNAL_HOSTNAME]
    if (ca_dir / "ca.crt").exists() and (ca_dir / "ca.key").exists() \
            and _ca_covers(ca_dir, names):
        return False
    _issue_ca(ca_dir, names)
    return True


def ensure(directory: Path, ca_dir: Path, hosts: list[str], user_cert: Path,
           user_key: Path) -> str:
    """Make tls.crt/tls.key exist in `directory` (what nginx mounts) from the CA in `ca_dir`
    (ensure_ca), unless the operator supplied them. Returns where the certificate came from."""
    directory.mkdir(parents=True, exist_ok=True)
    if user_cert.exists() and user_cert.read_bytes().strip():
        _install_user_cert(directory, user_cert, user_key)
        (directory / "ca.crt").unlink(missing_ok=True)  # a public CA signed it
        return "user-supplied"
    if _server_cert_fits(directory, hosts, ca_dir=ca_dir):
        return "kept"
    _issue_server(directory, ca_dir, hosts)
    return "generated"


def ensure_internal(directory: Path, ca_dir: Path, hostname: str) -> str:
    """internal.crt/.key for the front door's name on the jobs network, from the platform's CA
    (ensure_ca)."""
    directory.mkdir(parents=True, exist_ok=True)
    if _server_cert_fits(directory, [hostname], name="internal", ca_dir=ca_dir):
        return "kept"
    _issue_server(directory, ca_dir, [hostname], name="internal")
    return "generated"


def publish_ca(ca_dir: Path, target: Path) -> None:
    """The CA certificate (never its key) into another service's volume."""
    target.mkdir(parents=True, exist_ok=True)
    data = (ca_dir / "ca.crt").read_bytes()
    path = target / "ca.crt"
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
        path.chmod(0o644)
