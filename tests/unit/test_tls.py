import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mlstack_platform import tls
from mlstack_platform.settings import SettingError


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "tls", tmp_path / "secrets" / "ca", tmp_path / "none.crt", tmp_path / "none.key"


def ensure(tls_dir, ca_dir, hosts, cert, key):
    """As init-secrets does: the CA first, then the certificate."""
    tls.ensure_ca(ca_dir, hosts)
    return tls.ensure(tls_dir, ca_dir, hosts, cert, key)


def verify(tls_dir, ca_dir, host: str):
    chain = x509.load_pem_x509_certificates((tls_dir / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(
        x509.IPAddress(__import__("ipaddress").ip_address(host)) if host[0].isdigit()
        else x509.DNSName(host))
    return verifier.verify(chain[0], chain[1:])


def test_generated_certificate_is_trusted_through_the_ca_for_every_host(dirs):
    tls_dir, ca_dir, cert, key = dirs
    assert ensure(tls_dir, ca_dir, ["localhost", "127.0.0.1", "ml.example"], cert, key) == "generated"
    for host in ("localhost", "127.0.0.1", "ml.example"):
        verify(tls_dir, ca_dir, host)
    with pytest.raises(VerificationError):
        verify(tls_dir, ca_dir, "other.example")
    # The CA's key stays with the secrets; nginx's volume holds no CA key.
    assert (ca_dir / "ca.key").exists() and not (tls_dir / "ca.key").exists()
    assert (tls_dir / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()


def test_restart_keeps_the_certificate(dirs):
    tls_dir, ca_dir, cert, key = dirs
    ensure(tls_dir, ca_dir, ["localhost"], cert, key)
    before = (tls_dir / "tls.crt").read_bytes()
    assert ensure(tls_dir, ca_dir, ["localhost"], cert, key) == "kept"
    assert (tls_dir / "tls.crt").read_bytes() == before


def test_new_host_names_under_the_cas_names_reissue_from_the_same_ca(dirs):
    tls_dir, ca_dir, cert, key = dirs
    ensure(tls_dir, ca_dir, ["ml.example"], cert, key)
    ca_before = (ca_dir / "ca.crt").read_bytes()
    assert ensure(tls_dir, ca_dir, ["ml.example", "eu.ml.example"], cert, key) == "generated"
    assert (ca_dir / "ca.crt").read_bytes() == ca_before  # users keep trusting the same CA
    verify(tls_dir, ca_dir, "eu.ml.example")


def test_a_host_name_outside_the_cas_names_needs_a_new_ca(dirs):
    tls_dir, ca_dir, cert, key = dirs
    ensure(tls_dir, ca_dir, ["ml.example"], cert, key)
    ca_before = (ca_dir / "ca.crt").read_bytes()
    assert tls.ensure_ca(ca_dir, ["ml.example", "10.0.0.5"]) is True
    assert (ca_dir / "ca.crt").read_bytes() != ca_before
    assert tls.ensure(tls_dir, ca_dir, ["ml.example", "10.0.0.5"], cert, key) == "generated"
    verify(tls_dir, ca_dir, "10.0.0.5")
    assert tls.ensure_ca(ca_dir, ["ml.example", "10.0.0.5"]) is False


def test_the_ca_certifies_the_platforms_names_alone(dirs):
    """Whoever holds the CA key (or a team member who trusts the CA) gets nothing for other
    names: a certificate for another host, signed by the very CA, is not trusted."""
    tls_dir, ca_dir, cert, key = dirs
    ensure(tls_dir, ca_dir, ["ml.example", "10.0.0.5"], cert, key)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    allowed = x509.DNSName("eu.ml.example")  # made the same way: proves the forgery is sound
    for name in (allowed, x509.DNSName("bank.example"), x509.DNSName("ml.example.evil.test"),
                 x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.6"))):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        forged = (x509.CertificateBuilder()
                  .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
                  .issuer_name(ca_cert.subject).public_key(leaf_key.public_key())
                  .serial_number(x509.random_serial_number())
                  .not_valid_before(now - dt.timedelta(minutes=1))
                  .not_valid_after(now + dt.timedelta(days=1))
                  .add_extension(x509.SubjectAlternativeName([name]), critical=False)
                  .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                      ca_cert.public_key()), critical=False)
                  .sign(ca_key, hashes.SHA256()))
        verifier = PolicyBuilder().store(Store([ca_cert])).build_server_verifier(name)
        if name == allowed:
            verifier.verify(forged, [])
            continue
        with pytest.raises(VerificationError, match="constraint"):
            verifier.verify(forged, [])
    # The internal name for jobs is among the CA's names.
    assert tls.ensure_internal(tls_dir, ca_dir, tls.INTERNAL_HOSTNAME) == "generated"


def test_a_ca_that_may_certify_any_name_is_replaced(dirs):
    """A CA made by a release before name constraints."""
    tls_dir, ca_dir, cert, key = dirs
    ensure(tls_dir, ca_dir, ["localhost"], cert, key)
    unconstrained_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlstack local CA")])
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(unconstrained_key.public_key()).serial_number(1)
           .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(unconstrained_key, hashes.SHA256()))
    (ca_dir / "ca.crt").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    assert tls.ensure_ca(ca_dir, ["localhost"]) is True
    assert ensure(tls_dir, ca_dir, ["localhost"], cert, key) == "generated"
    verify(tls_dir, ca_dir, "localhost")


def self_signed(tmp_path, name="ml.example", days=30):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=2)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_a_user_supplied_certificate_wins(dirs, tmp_path):
    tls_dir, ca_dir, _, _ = dirs
    cert, key = self_signed(tmp_path)
    assert ensure(tls_dir, ca_dir, ["localhost"], cert, key) == "user-supplied"
    assert (tls_dir / "tls.crt").read_bytes() == cert.read_bytes()
    assert not (tls_dir / "ca.crt").exists()


def test_a_key_that_does_not_match_the_certificate_is_refused(dirs, tmp_path):
    tls_dir, ca_dir, _, _ = dirs
    cert, _ = self_signed(tmp_path, "a.example")
    _, other_key = self_signed(tmp_path, "b.example")
    with pytest.raises(SettingError, match="TLS_KEY_FILE does not belong"):
        ensure(tls_dir, ca_dir, ["localhost"], cert, other_key)
    assert not (tls_dir / "tls.crt").exists()


def test_a_certificate_without_its_key_is_refused(dirs, tmp_path):
    tls_dir, ca_dir, _, missing_key = dirs
    cert, _ = self_signed(tmp_path)
    missing_key.write_text("")  # what compose mounts when TLS_KEY_FILE is unset
    with pytest.raises(SettingError, match="set both"):
        ensure(tls_dir, ca_dir, ["localhost"], cert, missing_key)


def test_an_expired_user_certificate_is_refused(dirs, tmp_path):
    tls_dir, ca_dir, _, _ = dirs
    cert, key = self_signed(tmp_path, days=-1)
    with pytest.raises(SettingError, match="expired"):
        ensure(tls_dir, ca_dir, ["localhost"], cert, key)
