"""`mlstack` and its code packing, against real git repositories and a real local HTTPS server
that speaks the jobs API's contract (no Docker, no platform)."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import io
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mlstack_trainer import cli, codepack

USER, PASSWORD = "alice", "alice-password"
JOB_ID = 7

# What the packer must keep of the `project` tree below, in git or not.
KEPT = {".gitignore", "train.py", "pkg/__init__.py", "pkg/model.py", "docs/notes.md",
        "sub/build/keep.txt"}


# -- certificates: a CA that signs the server's certificate, and a CA that signs nothing --------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, wrong_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {"ca": _pem(_cert("test CA", ca_key, "test CA", ca_key, ca=True)),
             "wrong_ca": _pem(_cert("other CA", wrong_key, "other CA", wrong_key, ca=True)),
             "cert": _pem(_cert("localhost", key, "test CA", ca_key, ca=False)),
             "key": key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())}
    for name, data in files.items():
        (d / f"{name}.pem").write_bytes(data)
    return {name: d / f"{name}.pem" for name in files}


# -- the platform: records every request and answers as the jobs API's contract says ----------

class Platform(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict] = []
        self.max_code_bytes = 1_000_000
        self.final_state = "succeeded"
        self.forbid: str | None = None  # 403 message for every POST
        # (status, body, content type) to answer every request with, e.g. nginx's HTML pages.
        self.canned: tuple[int, object, str] | None = None

    def posts(self) -> list[dict]:
        return [r for r in self.seen if r["method"] == "POST"]


class Handler(BaseHTTPRequestHandler):
    server: Platform

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def answer(self, status: int, body, content_type: str = "application/json",
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if content_type == "application/json" else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.route()

    def do_POST(self) -> None:
        self.route()

    def route(self) -> None:
        s = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        s.seen.append({"method": self.command, "path": url.path, "headers": dict(self.headers),
                       "body": body})
        job = {"id": JOB_ID, "state": "queued", "name": "demo", "submitter": USER,
               "error": None, "links": {}}
        if s.canned:
            return self.answer(*s.canned)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {token}":
            return self.answer(401, {"error": "not logged in"})
        if s.forbid and self.command == "POST":
            return self.answer(403, {"error": s.forbid})
        route = (self.command, url.path)
        if route == ("GET", "/trainer/api/config"):
            return self.answer(200, {"api_version": "1", "max_code_bytes": s.max_code_bytes})
        if route == ("POST", "/trainer/api/jobs"):
            return self.answer(201, job)
        if route == ("GET", "/trainer/api/jobs"):
            return self.answer(200, {"jobs": [job]})
        if route == ("GET", f"/trainer/api/jobs/{JOB_ID}/logs"):
            # One chunk while running, then nothing more and the final state: no 1 s polls.
            first = parse_qs(url.query).get("offset") == ["0"]
            return self.answer(200, b"epoch 1\n" if first else b"", "text/plain",
                               {"X-Next-Offset": "8",
                                "X-Job-State": "running" if first else s.final_state})
        if route == ("GET", f"/trainer/api/jobs/{JOB_ID}"):
            error = "out of memory" if s.final_state == "failed" else None
            return self.answer(200, {**job, "state": s.final_state, "error": error})
        return self.answer(404, {"error": "no such job"})


@pytest.fixture
def platform(pki):
    server = Platform()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def clean(monkeypatch):
    """No MLflow, proxy, CA bundle or git settings from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("MLFLOW_") or name.lower().endswith("_proxy") or name in (
                "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "*")
    # The user's own git settings (global excludes, hooks, signing) stay out of the tests.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return monkeypatch


@pytest.fixture
def env(clean, platform, pki):
    monkeypatch = clean
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://127.0.0.1:{platform.server_port}/")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(pki["ca"]))
    return monkeypatch


def mlstack(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *words: str) -> None:
    """A non-zero exit and one `error:` line, last on stderr (after "packed ..." at most)."""
    assert rc != 0
    lines = err.splitlines()
    assert lines[-1].startswith("error: ") and len(lines) <= 2 and lines[0].startswith(
        ("error: ", "packed ")), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


# -- the code directory --------------------------------------------------------------------------

def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path, clean) -> Path:
    root = tmp_path / "project"
    _write(root, {
        ".gitignore": "# data and outputs\ndata/\n*.log\n/build\ndocs/*.tmp\n!keep.log\n",
        "train.py": "print('train')\n", "pkg/__init__.py": "", "pkg/model.py": "MODEL = 1\n",
        "docs/notes.md": "notes\n", "docs/draft.tmp": "x", "sub/build/keep.txt": "anchored\n",
        "build/out.bin": b"\0" * 10, "data/big.csv": "a,b\n" * 100, "run.log": "log\n",
        "pkg/__pycache__/model.cpython-311.pyc": b"pyc", "stray.pyc": b"pyc",
        ".venv/pyvenv.cfg": "home = /usr\n", ".venv/lib/site.py": "",
        "myenv/pyvenv.cfg": "home = /usr\n", "myenv/lib/x.py": "",  # a venv by another name
        "venv/x.py": "", ".tox/py311/x": "", "node_modules/x/index.js": "",
    })
    return root


@pytest.fixture
def repo(project) -> Path:
    git(project, "init", "-q", "-b", "main")
    git(project, "add", ".")
    # Tracked anyway: the packer must still leave a cache out.
    git(project, "add", "-f", "pkg/__pycache__/model.cpython-311.pyc")
    (project / "gone.py").write_text("")
    git(project, "add", "gone.py")
    git(project, "commit", "-q", "-m", "first")
    (project / "gone.py").unlink()  # still in the index, not on disk
    git(project, "remote", "add", "origin", "https://bob:s3cret@git.example.com/team/proj.git")
    return project


def _names(packed: codepack.Packed) -> dict[str, bytes]:
    with packed.archive, tarfile.open(fileobj=packed.archive, mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_plain_directory_follows_its_gitignore_and_leaves_out_caches_and_venvs(project):
    assert not codepack.in_git_checkout(project)
    assert codepack.list_files(project) == sorted(KEPT)
    packed = codepack.pack(project)
    names = _names(packed)
    assert set(names) == KEPT and names["train.py"] == b"print('train')\n"
    assert dict(packed.files)["train.py"] == len("print('train')\n")


def test_git_checkout_lists_through_git(repo):
    (repo / "untracked.py").write_text("")  # neither committed nor ignored: travels
    (repo / ".git" / "info" / "exclude").write_text("local-only.txt\n")
    (repo / "local-only.txt").write_text("")  # git's own excludes apply too
    # gone.py: deleted but still in git's index, so listed and then skipped by pack.
    assert codepack.list_files(repo) == sorted(KEPT | {"untracked.py", "gone.py"})
    assert set(_names(codepack.pack(repo))) == KEPT | {"untracked.py"}
    # A subdirectory of the checkout: paths relative to it, nothing from outside.
    assert codepack.list_files(repo / "pkg") == ["__init__.py", "model.py"]


def test_without_git_the_gitignore_still_applies(repo, monkeypatch):
    real_which = codepack.shutil.which
    monkeypatch.setattr(codepack.shutil, "which",
                        lambda name: None if name == "git" else real_which(name))
    assert codepack.list_files(repo) == sorted(KEPT)
    assert codepack.git_source(repo) == {}


def test_symlinks_are_stored_as_their_file_only_inside_the_directory(project, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    (project / "link-in.py").symlink_to(project / "train.py")
    (project / "link-out.txt").symlink_to(tmp_path / "outside.txt")
    (project / "link-dir").symlink_to(project / "pkg")
    (project / "loop").symlink_to(project / "loop")
    packed = codepack.pack(project)
    with packed.archive, tarfile.open(fileobj=packed.archive, mode="r:gz") as tar:
        assert all(m.isfile() and not m.name.startswith(("/", "..")) for m in tar.getmembers())
        assert tar.extractfile("link-in.py").read() == b"print('train')\n"
        assert set(tar.getnames()) == KEPT | {"link-in.py"}  # no link-out, link-dir, loop


def test_git_source_gives_commit_dirty_flag_branch_and_remote_without_password(repo):
    source = codepack.git_source(repo)
    assert source == {"git_commit": git(repo, "rev-parse", "HEAD"), "git_dirty": True,
                      "git_branch": "main", "git_remote": "https://git.example.com/team/proj.git"}
    git(repo, "rm", "-q", "--cached", "gone.py")
    git(repo, "commit", "-q", "-m", "gone")
    (repo / "new.py").write_text("")  # untracked files do not make it dirty
    assert codepack.git_source(repo)["git_dirty"] is False
    (repo / "train.py").write_text("print('changed')\n")
    assert codepack.git_source(repo)["git_dirty"] is True
    assert codepack.git_source(repo.parent) == {}  # not a checkout


def test_pack_stops_at_the_limit_and_knows_the_biggest_files(project):
    _write(project, {f"weights{i}.bin": os.urandom(2000 * (i + 1)) for i in range(6)})
    with pytest.raises(codepack.TooLarge) as e:
        codepack.pack(project, limit=5000)
    assert [name for name, _ in e.value.biggest()] == [f"weights{i}.bin" for i in (5, 4, 3, 2, 1)]


# -- the CLI against the HTTPS platform ------------------------------------------------------

@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\nentrypoint: python train.py\n")
    return path


def _parts(request: dict) -> dict[str, email.message.Message]:
    head = f"Content-Type: {request['headers']['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request["body"], policy=email.policy.HTTP)
    return {part.get_param("name", header="content-disposition"): part
            for part in message.iter_parts()}


def test_submit_with_code_uploads_spec_code_and_git_source(env, capsys, platform, repo, spec):
    rc, out, err = mlstack(capsys, "submit", str(spec), "--code", str(repo))
    assert (rc, out) == (0, f"{JOB_ID}\n"), err
    [post] = platform.posts()
    assert post["headers"]["Content-Type"].startswith("multipart/form-data")
    parts = _parts(post)
    assert parts["spec"].get_content() == spec.read_bytes()
    assert parts["spec"].get_content_type() == "application/yaml"
    code = parts["code"]
    assert (code.get_filename(), code.get_content_type()) == ("code.tar.gz", "application/gzip")
    with tarfile.open(fileobj=io.BytesIO(code.get_content()), mode="r:gz") as tar:
        assert set(tar.getnames()) == KEPT
    source = json.loads(parts["source"].get_content())
    assert source["git_commit"] == git(repo, "rev-parse", "HEAD")
    assert source["git_remote"] == "https://git.example.com/team/proj.git"


def test_submit_without_code_posts_the_yaml(env, capsys, platform, spec):
    rc, out, _ = mlstack(capsys, "submit", str(spec))
    assert (rc, out) == (0, f"{JOB_ID}\n")
    [post] = platform.posts()
    assert post["headers"]["Content-Type"] == "application/yaml"
    assert post["body"] == spec.read_bytes()


@pytest.mark.parametrize("state, rc, last", [("succeeded", 0, "job 7 succeeded"),
                                             ("failed", 1, "job 7 failed: out of memory"),
                                             ("cancelled", 1, "job 7 cancelled")])
def test_follow_exits_by_the_jobs_final_state(env, capsys, platform, spec, state, rc, last):
    platform.final_state = state
    got, out, err = mlstack(capsys, "submit", str(spec), "--follow")
    assert got == rc
    assert out == f"{JOB_ID}\nepoch 1\n"
    assert err.splitlines()[-1] == last


def test_code_over_the_limit_is_refused_before_upload(env, capsys, platform, project, spec):
    platform.max_code_bytes = 4000
    _write(project, {"model.h5": os.urandom(9000), "extra.bin": os.urandom(3000)})
    rc, _, err = mlstack(capsys, "submit", str(spec), "--code", str(project))
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "model.h5" in err and "extra.bin" in err and "4000 bytes" in err
    assert "TRAINER_MAX_CODE_MB" in err
    assert platform.posts() == []


def test_server_cert_path_wins_over_requests_ca_bundle(env, capsys, pki):
    env.setenv("REQUESTS_CA_BUNDLE", str(pki["wrong_ca"]))
    env.setenv("CURL_CA_BUNDLE", str(pki["wrong_ca"]))
    rc, out, err = mlstack(capsys, "jobs")
    assert rc == 0, err
    assert out.split()[:3] == [str(JOB_ID), "queued", "demo"]


def test_insecure_tls_needs_no_ca(env, capsys, pki):
    env.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    env.setenv("REQUESTS_CA_BUNDLE", str(pki["wrong_ca"]))
    env.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    rc, _, err = mlstack(capsys, "show", str(JOB_ID))
    assert (rc, err) == (0, "")


def test_wrong_ca_is_one_line_naming_the_setting(env, capsys, pki):
    env.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(pki["wrong_ca"]))
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "MLFLOW_TRACKING_SERVER_CERT_PATH", "scripts/ca-cert")


def test_without_any_ca_the_requests_bundle_is_used_and_fails(env, capsys, pki):
    env.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    env.setenv("REQUESTS_CA_BUNDLE", str(pki["wrong_ca"]))
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "not trusted")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_names_the_url(env, capsys):
    url = f"https://127.0.0.1:{_closed_port()}"
    env.setenv("MLFLOW_TRACKING_URI", url)
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, url, "MLFLOW_TRACKING_URI")


def test_silent_server_times_out(env, capsys):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        env.setenv("MLFLOW_TRACKING_URI", f"https://127.0.0.1:{s.getsockname()[1]}")
        env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "0.5")
        rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "no answer", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def test_wrong_password(env, capsys):
    env.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "not logged in", "MLFLOW_TRACKING_PASSWORD")


def test_not_allowed_prints_the_servers_reason(env, capsys, platform, spec, project):
    platform.forbid = "not allowed: submitting jobs needs the 'trainer' permission"
    rc, _, err = mlstack(capsys, "submit", str(spec), "--code", str(project))
    one_line_error(rc, err, "needs the 'trainer' permission")
    assert "not allowed: not allowed" not in err


def test_server_error_gives_status_and_first_line(env, capsys, platform):
    platform.canned = (502, b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>",
                       "text/html")
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "502", "502 Bad Gateway")


def test_non_json_answer(env, capsys, platform):
    platform.canned = (200, b"<html><body>Welcome</body></html>", "text/html")
    rc, _, err = mlstack(capsys, "jobs")
    one_line_error(rc, err, "expected JSON", "text/html", "Welcome")


def test_missing_spec_file_and_code_directory(env, capsys, spec, tmp_path, platform):
    rc, _, err = mlstack(capsys, "submit", str(tmp_path / "nope.yaml"))
    one_line_error(rc, err, "nope.yaml")
    rc, _, err = mlstack(capsys, "submit", str(spec), "--code", str(tmp_path / "nodir"))
    one_line_error(rc, err, "nodir")
    assert platform.seen == []


def test_invalid_spec_lists_every_problem(env, capsys, platform, spec):
    platform.canned = (400, {"error": "invalid spec", "problems": ["name: missing",
                                                                  "gpus: not a number"]},
                       "application/json")
    rc, _, err = mlstack(capsys, "submit", str(spec))
    assert rc == 1
    assert err.splitlines() == ["error: invalid spec", "  - name: missing",
                                "  - gpus: not a number"]
