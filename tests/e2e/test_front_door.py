"""The front door against someone on the network and a curious teammate: TLS, the headers a
browser obeys, CORS, how fast a changed password stops working, and model versions pointing at
files their creator may not read. Each attack is performed through nginx and seen refused."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import pytest

from .stack import Stack


@pytest.fixture(scope="module")
def dora(stack: Stack):
    return stack.user("dora")


@pytest.fixture(scope="module")
def emil(stack: Stack):
    return stack.user("emil")


def handshake(stack: Stack, version: ssl.TLSVersion, ciphers: str | None = None) -> str:
    """The cipher negotiated, or the error that ended the handshake."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", stack.https_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.cipher()[0]
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"


def test_tls_offers_only_forward_secret_aead_suites(stack: Stack):
    assert not handshake(stack, ssl.TLSVersion.TLSv1_3).startswith("refused")
    negotiated = handshake(stack, ssl.TLSVersion.TLSv1_2)
    assert "GCM" in negotiated or "CHACHA20" in negotiated, negotiated
    # CBC with SHA-1 or SHA-2, and RSA key exchange: not offered.
    for weak in ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA",
                 "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384",
                 "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA"):
        assert handshake(stack, ssl.TLSVersion.TLSv1_2, weak).startswith("refused"), weak


SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "Referrer-Policy",
                    "X-Frame-Options", "Content-Security-Policy")


def test_every_response_carries_the_browser_protections(stack: Stack, dora):
    s = stack.session(*dora)
    anonymous = stack.session()
    responses = {
        "MLflow UI": s.get(f"{stack.base_url}/"),
        "REST API": s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/search"),
        "TensorBoard index": s.get(f"{stack.base_url}/tensorboard/"),
        "TensorBoard refused": s.get(f"{stack.base_url}/tensorboard/all/"),
        "jobs API": s.get(f"{stack.base_url}/trainer/api/config"),
        "jobs API docs": s.get(f"{stack.base_url}/trainer/api/docs"),
        "login required": anonymous.get(f"{stack.base_url}/"),
        "not found": s.get(f"{stack.base_url}/tensorboard/no-such-thing/"),
        "bad request": s.post(f"{stack.base_url}/api/2.0/mlflow/runs/create", data="{not json"),
    }
    for what, r in responses.items():
        for header in SECURITY_HEADERS:
            assert r.headers.get(header), (what, r.status_code, header)
            # Once: a service's own copy is dropped, not repeated.
            assert "," not in r.headers[header] or header == "Content-Security-Policy", (
                what, header, r.headers[header])
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'self'" in csp and "object-src 'none'" in csp, what
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["X-Frame-Options"] == "SAMEORIGIN"


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://localhost",
                                    "https://evil.example", "null"])
def test_credentialed_cross_origin_requests_are_answered_for_the_platforms_origin_only(
        stack: Stack, dora, origin):
    s = stack.session(*dora)
    url = f"{stack.base_url}/api/2.0/mlflow/experiments/search"
    foreign = s.get(url, headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in foreign.headers, foreign.headers
    assert "Access-Control-Allow-Credentials" not in foreign.headers
    preflight = s.options(url, headers={"Origin": origin,
                                        "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers, preflight.headers
    own_origin = f"https://localhost:{stack.https_port}"
    own = s.get(url, headers={"Origin": own_origin})
    assert own.headers["Access-Control-Allow-Origin"] == own_origin
    assert own.headers["Access-Control-Allow-Credentials"] == "true"


def paths_answer(stack: Stack, user) -> dict[str, int]:
    s = stack.session(*user)
    return {path: s.get(f"{stack.base_url}{path}").status_code
            for path in ("/api/2.0/mlflow/users/current", "/tensorboard/?format=json",
                         "/trainer/api/jobs")}


def test_a_changed_password_and_a_deleted_user_are_refused_everywhere_within_15_s(
        stack: Stack):
    user = stack.user("felix")
    assert set(paths_answer(stack, user).values()) == {200}  # every cache now holds it
    new = ("felix", "felix-has-a-new-long-password")
    stack.script("users", "set-password", "felix", "--password-stdin", input=new[1] + "\n")
    # 401, or 429 once the polling's own failures add up (failed logins are limited).
    stack.wait_for("the old password to be refused everywhere",
                   lambda: set(paths_answer(stack, user).values()) <= {401, 429},
                   timeout_s=15, every_s=1)
    assert set(paths_answer(stack, new).values()) == {200}
    stack.script("users", "delete", "felix")
    stack.wait_for("the deleted user to be refused everywhere",
                   lambda: set(paths_answer(stack, new).values()) <= {401, 429},
                   timeout_s=15, every_s=1)


def test_a_model_version_cannot_point_at_files_its_creator_may_not_read(stack: Stack, dora,
                                                                       emil):
    """Registering a version whose source is someone else's artifacts (or the bucket itself)
    would let MLflow serve those files to its creator (`/model-versions/get-artifact`)."""
    code = """
import json, mlflow, os, tempfile
mlflow.set_experiment(os.environ["EXPERIMENT"])
with mlflow.start_run() as run:
    path = os.path.join(tempfile.mkdtemp(), "secret.txt")
    open(path, "w").write("private")
    mlflow.log_artifact(path, "model")
print(json.dumps({"run": run.info.run_id, "experiment": run.info.experiment_id}))
"""

    def logged(user, experiment):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**stack.client_env(*user), "EXPERIMENT": experiment},
                             timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    doras, emils = logged(dora, "dora-private"), logged(emil, "emil-models")
    s = stack.session(*emil)
    api = f"{stack.base_url}/api/2.0/mlflow"
    model = f"emil-model-{uuid.uuid4().hex[:6]}"
    s.post(f"{api}/registered-models/create", json={"name": model})
    bucket = "mlflow-artifacts"
    attempts = {
        f"runs:/{doras['run']}/model": 403,
        f"mlflow-artifacts:/{doras['experiment']}/{doras['run']}/artifacts/model": 403,
        f"mlflow-artifacts:/{emils['experiment']}/{doras['run']}/artifacts/model": 400,
        f"s3://{bucket}/{doras['experiment']}/{doras['run']}/artifacts/model": 400,
        f"runs:/{emils['run']}/../../{doras['run']}/artifacts/model": 400,
        "file:///var/lib/mlstack/secrets": 400,
        "/etc/passwd": 400,
        "http://169.254.169.254/latest/meta-data/": 400,
    }
    for source, status in attempts.items():
        r = s.post(f"{api}/model-versions/create", json={"name": model, "source": source})
        assert r.status_code == status, (source, r.status_code, r.text)
        assert "model version source" in r.json()["message"]
    # Nothing was registered, and dora's file cannot be fetched through the model registry.
    assert not s.get(f"{api}/registered-models/get", params={"name": model}).json()[
        "registered_model"].get("latest_versions")
    # emil's own run works as ever.
    ok = s.post(f"{api}/model-versions/create", json={
        "name": model, "source": f"runs:/{emils['run']}/model", "run_id": emils["run"]})
    assert ok.status_code == 200, ok.text
    versions = s.get(f"{api}/registered-models/get", params={"name": model}).json()[
        "registered_model"]["latest_versions"]
    assert [v["source"] for v in versions] == [f"runs:/{emils['run']}/model"]


def test_nginx_fetches_downloads_from_the_store_and_nobody_can_steer_it(stack: Stack, dora,
                                                                          emil):
    """A download is fetched from MinIO by nginx, with a GET MLflow presigned for that one file
    once the caller's permission passed (artifact_download.py). The teammate sees the file and
    MLflow's headers, nothing of the store; nginx's internal location cannot be called from
    outside; a forged handoff header or store path reaches nothing; a file another user may
    not read is refused as before; and odd names and a .gz arrive byte for byte."""
    api, base = f"{stack.base_url}/api/2.0/mlflow", stack.base_url
    d = stack.session(*dora)
    experiment = d.post(f"{api}/experiments/create",
                        json={"name": f"dora-handoff-{uuid.uuid4().hex[:6]}"}).json()["experiment_id"]
    run = d.post(f"{api}/runs/create", json={"experiment_id": experiment}).json()["run"]["info"]["run_id"]
    files = {"weights.bin": os.urandom(3 << 20),  # several of nginx's buffers
             "report.html.gz": gzip.compress(b"<html><script>alert(1)</script></html>"),
             "a b+c(1)%&=;,é模型.txt": b"odd names travel whole"}
    urls = {}
    for name, data in files.items():
        urls[name] = f"{base}/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/{quote(name)}"
        assert d.put(urls[name], data=data).status_code == 200

    forged = {"X-Mlstack-Artifact-Handoff": "0",
              "X-Mlstack-Artifact-Store": "/mlflow-artifacts/0/x?X-Amz-Signature=forged"}
    for name, data in files.items():
        r = d.get(urls[name], headers=forged)
        assert r.status_code == 200 and r.content == data, (name, r.status_code, r.text[:200])
        # MLflow's headers and nginx's own, nothing of the store's (no URL, no S3 header).
        assert set(map(str.lower, r.headers)) <= DOWNLOAD_HEADERS, r.headers
        assert r.headers["Content-Disposition"].startswith("attachment"), r.headers
        assert r.headers["Cache-Control"] == "no-cache"
        assert "Content-Encoding" not in r.headers  # the .gz arrives as stored, not unpacked
    # nginx fetched them from MinIO: MLflow answered first, then MinIO ("<mlflow> : <minio>").
    # (nginx writes its access log at least once a second.)
    for _ in range(10):
        time.sleep(1)
        log = stack.compose("logs", "--no-color", "nginx").stdout
        lines = [line for line in log.splitlines()
                 if f"GET /api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/weights.bin"
                 in line and f" {dora[0]} " in line and '" 200 ' in line]
        if lines:
            break
    assert lines and all(re.search(r'upstream="[^"]*:5000 : [^"]*:9000"', line) for line in lines), lines

    e = stack.session(*emil)
    assert e.get(urls["weights.bin"]).status_code == 403
    # nginx's location for it has no address (a named one): asked for, MLflow refuses the path.
    key = f"/mlflow-artifacts/{experiment}/{run}/artifacts/weights.bin"
    for session in (e, d):
        for path in ("/_mlstack_artifact_store", "/@mlstack_artifact_store",
                     f"/@mlstack_artifact_store{key}"):
            r = session.get(f"{base}{path}", headers={
                "X-Mlstack-Artifact-Store": f"{key}?X-Amz-Signature=forged"})
            assert r.status_code in (403, 404), (path, r.status_code)
            assert files["weights.bin"][:64] not in r.content, path
    assert stack.session().get(f"{base}/@mlstack_artifact_store").status_code == 401
    # Another service on MLflow's network (a compromised TensorBoard) that claims to be nginx
    # gets the file streamed, never a presigned URL.
    probe = f"""
import base64, urllib.request
request = urllib.request.Request(
    "http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/weights.bin",
    headers={{"Authorization": "Basic " + base64.b64encode(b"{dora[0]}:{dora[1]}").decode(),
             "X-Mlstack-Artifact-Handoff": "1"}})
answer = urllib.request.urlopen(request, timeout=60)
print(len(answer.read()), sorted(h.lower() for h in answer.headers if h.lower().startswith("x-")))
"""
    out = stack.compose("exec", "-T", "tensorboard", "python", "-c", probe).stdout.split(None, 1)
    assert int(out[0]) == len(files["weights.bin"]) and "x-accel" not in out[1], out


# What a download through the front door carries: MLflow's headers for the file and nginx's.
DOWNLOAD_HEADERS = {
    "server", "date", "content-type", "content-length", "connection", "keep-alive",
    "cache-control", "content-disposition", "strict-transport-security", "x-content-type-options",
    "referrer-policy", "x-frame-options", "content-security-policy", "vary",
}


def test_password_guessing_is_stopped_and_nobody_else_is_held_up(stack: Stack):
    gina, hank = stack.user("gina"), stack.user("hank")
    url = f"{stack.base_url}/api/2.0/mlflow/users/current"
    guesses = [stack.session("gina", f"guess-{i}").get(url) for i in range(40)]
    codes = [r.status_code for r in guesses]
    assert codes[:9] == [401] * 9 and codes[-1] == 429, codes
    assert 0 < int(guesses[-1].headers["Retry-After"]) <= 300
    # The same address, another user: not held up; and the guessed user elsewhere would not be.
    assert stack.session(*hank).get(url).status_code == 200
    # gina herself, from the guesser's address, waits out the block (her password is not even
    # checked: a blocked guesser learns nothing); an admin lifts it.
    assert stack.session(*gina).get(url).status_code == 429
    stack.script("users", "unblock", "gina")
    assert stack.session(*gina).get(url).status_code == 200
    # Refused logins are logged with the name and the address, never the password.
    logs = stack.compose("logs", "--no-log-prefix", "mlflow").stdout
    assert "login refused" in logs and "'gina'" in logs and "guess-" not in logs


def test_unknown_and_known_user_names_are_refused_alike(stack: Stack):
    stack.user("iris")
    url = f"{stack.base_url}/api/2.0/mlflow/users/current"

    def median_ms(username: str) -> float:
        times = []
        for i in range(7):  # under the failures that block
            s = stack.session(username, f"wrong-{i}")
            started = time.perf_counter()
            assert s.get(url).status_code == 401
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    known, unknown = median_ms("iris"), median_ms("nobody-of-that-name")
    # Both pay one password hash; an unknown name used to cost a tenth of it.
    assert 0.5 < unknown / known < 2, (known, unknown)


def test_a_forged_client_address_does_not_escape_the_login_limit(stack: Stack):
    """nginx sets the address MLflow counts by (X-Real-IP) itself: a guesser who sends a new
    one with every try is still one address."""
    stack.user("jules")
    url = f"{stack.base_url}/api/2.0/mlflow/users/current"
    codes = [stack.session("jules", f"guess-{i}").get(url, headers={
        "X-Real-IP": f"10.1.2.{i}", "X-Forwarded-For": f"10.1.2.{i}"}).status_code
        for i in range(12)]
    assert codes[-1] == 429, codes
    stack.script("users", "unblock", "jules")


def test_a_request_smuggled_inside_another_never_reaches_mlflow(stack: Stack, dora, emil):
    """nginx keeps its connections to MLflow open and shared between users: a request hidden in
    another's body (framed both by Content-Length and as chunked, each telling a different
    length) must never reach MLflow as a request of its own, where its answer could go to the
    next user on that connection. nginx frames what it sends upstream itself."""
    smuggled = "GET /api/2.0/mlflow/users/current HTTP/1.1\r\nHost: localhost\r\nX-Pad: "
    body = "0\r\n\r\n" + smuggled
    answer = raw_https(stack, "POST /api/2.0/mlflow/experiments/search HTTP/1.1\r\n"
                       + request_headers(stack, dora) + "Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:2000]
    assert b'"user"' not in answer, answer[:2000]
    assert_everyone_gets_their_own_answers(stack, emil)


def test_a_shared_connection_to_mlflow_cannot_be_upgraded_to_another_protocol(
        stack: Stack, dora, emil):
    """An h2c upgrade asked through the front door would, were it passed on, turn a kept-alive
    connection to MLflow into one the asker drives past nginx's checks. nginx does not pass
    Upgrade on: the request is answered as plain HTTP/1.1."""
    answer = raw_https(stack, "GET /api/2.0/mlflow/users/current HTTP/1.1\r\n"
                       + request_headers(stack, dora) + "Connection: Upgrade, HTTP2-Settings\r\n"
                       "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:2000]
    assert b" 101 " not in answer and b"\r\nupgrade:" not in answer.lower(), answer[:2000]
    assert_everyone_gets_their_own_answers(stack, emil)


def request_headers(stack: Stack, user: tuple[str, str]) -> str:
    credential = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return f"Host: localhost:{stack.https_port}\r\nAuthorization: Basic {credential}\r\n"


def raw_https(stack: Stack, request: str) -> bytes:
    """Everything the front door answers to one hand-made HTTP/1.1 request on a connection
    of its own, read until nginx closes it or goes quiet."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.set_alpn_protocols(["http/1.1"])
    answer = b""
    with socket.create_connection(("127.0.0.1", stack.https_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request.encode())
        tls.settimeout(5)
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except TimeoutError:
            pass  # the connection stayed open: everything due has been answered
    return answer


def assert_everyone_gets_their_own_answers(stack: Stack, user: tuple[str, str]) -> None:
    """Whichever kept-alive connection to MLflow serves them."""
    session = stack.session(*user)
    for _ in range(8):
        me = session.get(f"{stack.base_url}/api/2.0/mlflow/users/current")
        assert me.status_code == 200 and me.json()["user"]["username"] == user[0], me.text


def test_accepted_credentials_are_remembered_in_nginxs_memory_alone(stack: Stack, dora):
    """nginx keeps MLflow's answer for an accepted credential a few seconds, per client address
    (the cache key holds the Authorization header itself): in a tmpfs only nginx's workers may
    read, never on disk."""
    assert stack.session(*dora).get(f"{stack.base_url}/api/2.0/mlflow/users/current").ok
    tmpfs = "/var/cache/nginx/mlstack-auth"
    cache = f"{tmpfs}/entries"
    out = stack.compose("exec", "-T", "nginx", "sh", "-c",
                        f"grep ' {tmpfs} ' /proc/mounts; stat -c '%a %U' {cache}; "
                        # the user of each nginx worker process (the images have no ps)
                        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | "
                        "grep -q '^nginx: worker process' && stat -c %U $p; done | sort -u; "
                        f"find {cache} -type f | wc -l").stdout.splitlines()
    mount, (mode, owner), files = out[0].split(), out[1].split(), int(out[-1])
    # Each entry is for one client address and credential (nginx writes its key in the entry).
    keys = stack.compose("exec", "-T", "nginx", "sh", "-c",
                         f"find {cache} -type f -exec grep -ah '^KEY: ' {{}} +").stdout.split("\n")
    assert all(re.fullmatch(r"KEY: [0-9a-f.:]+ Basic \S+", key) for key in keys if key), keys
    assert mount[2] == "tmpfs"
    workers = set(out[2:-1])
    assert mode == "700" and workers == {owner} and owner != "root"  # nginx's workers alone
    assert files >= 1  # dora's acceptance is there, in memory
    # A wrong password is never answered from the cache, whoever was accepted before.
    wrong = stack.session(dora[0], dora[1] + "-not")
    assert wrong.get(f"{stack.base_url}/api/2.0/mlflow/users/current").status_code == 401
