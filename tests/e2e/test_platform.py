"""The platform end to end, through nginx only, as its users meet it: the README's commands,
the stock MLflow client, plain HTTPS. One stack is brought up for the whole module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .client_workflow import sha256
from .stack import Stack
from .test_tensorboard import laptop_run, run_tags

HERE = Path(__file__).parent
LONG_RUNNING = {"postgres", "minio", "mlflow", "tensorboard", "trainer", "trainer-api", "janitor",
                "nginx"}
ONE_SHOT = {"init-secrets", "init"}


def run_client(stack: Stack, user: str, password: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE / "client_workflow.py"), *args],
        env=stack.client_env(user, password), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def admin(stack: Stack) -> tuple[str, str]:
    return stack.admin()


@pytest.fixture(scope="module")
def alice(stack: Stack) -> tuple[str, str]:
    out = stack.script("users", "create", "alice").stdout
    password = out.split("password:")[1].strip()
    return "alice", password


@pytest.fixture(scope="module")
def bob(stack: Stack) -> tuple[str, str]:
    password = "bob-has-a-long-password"
    stack.script("users", "create", "bob", "--password-stdin", input=password + "\n")
    return "bob", password


# --- the stack itself -------------------------------------------------------------------

def test_every_service_is_up_and_healthy(stack: Stack):
    services = stack.services()
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        assert services[name]["State"] == "running", services[name]
        assert services[name]["Health"] == "healthy", services[name]
    for name in ONE_SHOT:
        assert services[name]["State"] == "exited" and services[name]["ExitCode"] == 0


def test_only_nginx_publishes_ports_and_stores_sit_on_an_internal_network(stack: Stack):
    services = stack.services()
    for name, row in services.items():
        published = [p for p in (row.get("Publishers") or []) if p.get("PublishedPort")]
        if name == "nginx":
            assert {p["TargetPort"] for p in published} == {80, 443}
            assert all(p["URL"] == "127.0.0.1" for p in published)
        else:
            assert published == [], f"{name} publishes {published}"
    inspect = subprocess.run(
        ["docker", "network", "inspect", f"{stack.project}_backend"],
        capture_output=True, text=True, check=True)
    assert json.loads(inspect.stdout)[0]["Internal"] is True


# --- credentials and authentication -----------------------------------------------------

def test_admin_credentials_are_generated_and_work(stack: Stack, admin):
    user, password = admin
    assert user == "admin"
    assert len(password) >= 24 and password != "password1234"
    r = stack.session(user, password).get(f"{stack.base_url}/api/2.0/mlflow/users/current")
    assert r.status_code == 200 and r.json()["user"]["username"] == "admin"


def test_http_redirects_to_https(stack: Stack):
    s = stack.session()
    r = s.get(f"http://localhost:{stack.http_port}/some/page?x=1", allow_redirects=False)
    assert r.status_code == 301
    assert r.headers["Location"] == f"https://localhost:{stack.https_port}/some/page?x=1"


PROTECTED = [
    "/",
    "/static-files/favicon.ico",
    "/api/2.0/mlflow/experiments/search?max_results=1",
    "/api/2.0/mlflow-artifacts/artifacts/0/somerun/artifacts/model.pkl",
    "/get-artifact?path=x&run_uuid=y",
    "/tensorboard/",
    "/tensorboard/1/",
    "/tensorboard/1/data/runs",
    "/tensorboard/1,2/data/runs",
    "/tensorboard/all/data/runs",
    "/font-roboto/x.woff2",
]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_path_needs_a_valid_login(stack: Stack, admin, path):
    url = f"{stack.base_url}{path}"
    anonymous = stack.session().get(url)
    assert anonymous.status_code == 401
    # The browser's login prompt: one realm, the same for MLflow and TensorBoard.
    assert anonymous.headers.get("WWW-Authenticate", "").startswith("Basic")
    wrong = stack.session(admin[0], "not-the-password").get(url)
    assert wrong.status_code == 401
    unknown = stack.session("nobody", "whatever-password").get(url)
    assert unknown.status_code == 401
    # Failed logins count (MLSTACK_LOGIN_MAX_FAILURES, test_front_door.py): forget these two,
    # so that the next paths (and the admin's later tests) are not answered 429.
    stack.script("users", "unblock", admin[0])
    stack.script("users", "unblock", "nobody")


def test_one_login_opens_mlflow_ui_and_tensorboard(stack: Stack, alice):
    s = stack.session(*alice)
    ui = s.get(f"{stack.base_url}/")
    assert ui.status_code == 200 and "<title>MLflow</title>" in ui.text
    tb = s.get(f"{stack.base_url}/tensorboard/")
    assert tb.status_code == 200 and "TensorBoard" in tb.text


@pytest.mark.parametrize("host", ["evil.example", "10.evil.example", "localhost.evil.example"])
def test_foreign_host_header_is_refused(stack: Stack, admin, host):
    # At the front door: nginx answers only for the configured host names.
    s = stack.session(*admin)
    s.verify = False  # the certificate does not name these hosts; the Host header is the test
    r = s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/search", headers={"Host": host})
    assert r.status_code == 421
    # Behind it, MLflow's own host check is active under gunicorn (set through
    # MLFLOW_SERVER_ALLOWED_HOSTS, since --allowed-hosts is refused with --gunicorn-opts).
    probe = textwrap.dedent(f"""
        import urllib.request, urllib.error
        req = urllib.request.Request("http://127.0.0.1:5000/api/2.0/mlflow/experiments/search",
                                     headers={{"Host": "{host}"}})
        try:
            print(urllib.request.urlopen(req).status)
        except urllib.error.HTTPError as e:
            print(e.code, e.read().decode())
    """)
    out = stack.compose("exec", "-T", "mlflow", "python", "-c", probe).stdout
    assert out.startswith("403") and "Invalid Host header" in out


def test_cross_origin_writes_and_framing_are_refused(stack: Stack, admin):
    s = stack.session(*admin)
    evil = s.post(f"{stack.base_url}/api/2.0/mlflow/experiments/create",
                  json={"name": "from-evil"}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "Cross-origin request blocked" in evil.text
    ours = s.post(f"{stack.base_url}/api/2.0/mlflow/experiments/create",
                  json={"name": "from-our-origin"},
                  headers={"Origin": f"https://localhost:{stack.https_port}"})
    assert ours.status_code == 200, ours.text
    assert s.get(f"{stack.base_url}/").headers.get("X-Frame-Options") == "SAMEORIGIN"


# --- a team member's work ----------------------------------------------------------------

def test_team_member_tracks_registers_and_loads_a_model(stack: Stack, alice, tmp_path):
    big = tmp_path / "weights.bin"
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))  # 200 MiB: no 413, no buffering limit, no timeout
    result = run_client(stack, *alice, "alice-digits", "alice-doubler", str(big))

    assert result["params"] == {"lr": "0.01", "epochs": "3"}
    assert result["loss"] == [[step, 1.0 / (step + 1)] for step in range(10)]
    # Artifacts go through MLflow's proxy: the client never sees an S3 URI.
    assert result["artifact_uri"].startswith("mlflow-artifacts:/")
    assert result["notes_roundtrip"] is True
    assert result["big_sha256"] == sha256(big)
    assert result["registered_version"] == "1"
    assert result["prediction"] == [6.0, 9.0]

    # The artifact really is in the bucket, with every byte.
    key = f"{result['experiment_id']}/{result['run_id']}/artifacts/big/weights.bin"
    probe = textwrap.dedent(f"""
        import boto3, os
        read = lambda name: open("/var/lib/mlstack/secrets/" + name).read().strip()
        s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
                          aws_access_key_id=read("s3_access_key"),
                          aws_secret_access_key=read("s3_secret_key"),
                          region_name="us-east-1")
        print(s3.head_object(Bucket="mlflow-artifacts", Key="{key}")["ContentLength"])
    """)
    out = stack.compose("exec", "-T", "-e", "MLFLOW_S3_ENDPOINT_URL=http://minio:9000",
                        "mlflow", "python", "-c", probe).stdout
    assert int(out.strip()) == big.stat().st_size


def test_users_cannot_read_each_others_experiments(stack: Stack, alice, bob, admin):
    base = stack.base_url
    as_alice, as_bob = stack.session(*alice), stack.session(*bob)
    created = as_alice.post(f"{base}/api/2.0/mlflow/experiments/create",
                            json={"name": "alice-private"})
    assert created.status_code == 200, created.text
    exp_id = created.json()["experiment_id"]
    run = as_alice.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id})
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]

    assert as_alice.get(f"{base}/api/2.0/mlflow/experiments/get",
                        params={"experiment_id": exp_id}).status_code == 200
    assert as_bob.get(f"{base}/api/2.0/mlflow/experiments/get",
                      params={"experiment_id": exp_id}).status_code == 403
    assert as_bob.get(f"{base}/api/2.0/mlflow/runs/get",
                      params={"run_id": run_id}).status_code == 403
    listed = as_bob.post(f"{base}/api/2.0/mlflow/experiments/search",
                         json={"max_results": 1000}).json().get("experiments", [])
    assert exp_id not in {e["experiment_id"] for e in listed}
    # The admin sees everything.
    assert stack.session(*admin).get(f"{base}/api/2.0/mlflow/experiments/get",
                                     params={"experiment_id": exp_id}).status_code == 200


def test_users_script_rejects_mistakes_without_changing_anything(stack: Stack, bob):
    dup = stack.script("users", "create", "bob", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    short = stack.script("users", "set-password", "bob", "--password-stdin",
                         input="short\n", check=False)
    assert short.returncode != 0 and "at least 12" in short.stderr
    # Bob's password still works.
    r = stack.session(*bob).get(f"{stack.base_url}/api/2.0/mlflow/users/current")
    assert r.status_code == 200


# --- TensorBoard (tests/e2e/test_tensorboard.py has the rest) --------------------------------

def test_a_browser_logs_in_once_and_sees_mlflow_and_tensorboard(stack: Stack, alice):
    """A real browser (Chromium, via Playwright) answering the login prompt as a person does,
    and following a run's TensorBoard link: it lands in that run's experiment, filtered to it.
    Runs after the tests above, which created alice's experiment."""
    shown = laptop_run(stack, alice, "alice-digits", "browser-shown", 0.8, 0.4)
    hidden = laptop_run(stack, alice, "alice-digits", "browser-hidden", 0.7, 0.3)
    experiment_id = shown["experiment_id"]
    names = {f"browser-shown-{shown['run_id']}/train", f"browser-hidden-{hidden['run_id']}/train"}
    s = stack.session(*alice)
    stack.wait_for("both runs in TensorBoard", lambda: names <= set(s.get(
        f"{stack.base_url}/tensorboard/{experiment_id}/data/runs").json()), timeout_s=60)
    link = stack.wait_for("the run's TensorBoard link", lambda: run_tags(
        stack, alice, shown["run_id"]).get("mlstack.tensorboard_url"), timeout_s=60)
    image = "mlstack-test/browser:dev"
    base = stack.compose("config", "--format", "json").stdout
    python_image = json.loads(base)["services"]["mlflow"]["build"]["args"]["PYTHON_IMAGE"]
    subprocess.run(["docker", "build", "-q", "--build-arg", f"PYTHON_IMAGE={python_image}",
                    "-t", image, str(HERE / "browser")], check=True, capture_output=True)
    shots = stack.workdir / "screenshots"
    shots.mkdir(exist_ok=True)
    shots.chmod(0o777)
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "-v", f"{shots}:/out",
         "-v", f"{HERE / 'browser'}:/checks:ro", image, stack.base_url, *alice,
         "alice-digits", f"#/experiments/{experiment_id}/runs/{shown['run_id']}",
         "browser-shown", link, shown["run_id"], hidden["run_id"], "/out"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mlflow_lists_experiment"] is True, report
    assert report["mlflow_shows_run"] is True, report
    assert report["tensorboard_lists_run"] is True, report
    assert report["tensorboard_hides_other_runs"] is True, report
    assert report["wrong_password_status"] == 401
    # Nothing the pages needed was refused or broke. (MLflow's UI probes its optional AI
    # assistant, unconfigured here and for admins only: 404 or 403, MLflow's own and harmless.)
    refused = [e for e in report["errors"]
               if e.startswith(("401", "403", "5")) and "/mlflow/assistant/" not in e]
    assert refused == [], refused
    # Both UIs work under the front door's Content-Security-Policy.
    assert report["csp_violations"] == [], report["csp_violations"]
    assert (shots / "mlflow.png").stat().st_size > 10_000
    assert (shots / "tensorboard.png").stat().st_size > 10_000


# --- configuration mistakes ---------------------------------------------------------------

@pytest.mark.parametrize("setting, value, message", [
    ("MLFLOW_WORKERS", "many", "MLFLOW_WORKERS='many' is not a whole number"),
    ("MLSTACK_ADMIN_PASSWORD", "short", "MLSTACK_ADMIN_PASSWORD is too short"),
    ("MLFLOW_AUTH_DEFAULT_PERMISSION", "ALL", "MLFLOW_AUTH_DEFAULT_PERMISSION='ALL' is not one of"),
    ("MLSTACK_HOSTNAMES", "bad_host!", "MLSTACK_HOSTNAMES: 'bad_host!' is not a host name"),
])
def test_bad_setting_stops_init_with_a_message_naming_it(stack: Stack, admin, setting, value,
                                                          message):
    proc = stack.compose("run", "--rm", "--no-deps", "-e", f"{setting}={value}", "init-secrets",
                         check=False)
    assert proc.returncode == 2
    assert message in proc.stdout + proc.stderr
    # Nothing stored was touched: the admin's password is the same and still works.
    assert stack.admin() == admin


def test_a_certificate_set_in_env_wins_and_is_served(stack: Stack, admin, monkeypatch):
    """TLS_CERT_FILE / TLS_KEY_FILE in .env: the operator's certificate replaces the generated
    one on the next `up`, nginx serves it, and removing them brings the generated one back."""
    import ssl

    from tests.unit.test_tls import self_signed  # the same helper the unit tests use

    cert, key = self_signed(stack.workdir, name="localhost")
    monkeypatch.setenv("TLS_CERT_FILE", str(cert))
    monkeypatch.setenv("TLS_KEY_FILE", str(key))
    stack.compose("up", "-d", "--wait", "--wait-timeout", "600")
    served = ssl.get_server_certificate(("127.0.0.1", stack.https_port))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    s = stack.session(*admin)
    s.verify = str(cert)
    assert s.get(f"{stack.base_url}/api/2.0/mlflow/users/current").status_code == 200

    monkeypatch.delenv("TLS_CERT_FILE")
    monkeypatch.delenv("TLS_KEY_FILE")
    stack.compose("up", "-d", "--wait", "--wait-timeout", "600")
    ok = stack.session(*admin).get(f"{stack.base_url}/api/2.0/mlflow/users/current")
    assert ok.status_code == 200  # trusted through the generated CA again


# --- restarts -------------------------------------------------------------------------------

def test_secrets_and_data_survive_a_full_restart(stack: Stack, admin, alice):
    ca_before = stack.ca_file.read_text()
    stack.compose("down")  # containers gone, volumes kept
    stack.compose("up", "-d", "--wait", "--wait-timeout", "600")
    assert stack.admin() == admin
    assert stack.script("ca-cert").stdout == ca_before
    s = stack.session(*alice)
    r = s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/get-by-name",
              params={"experiment_name": "alice-digits"})
    assert r.status_code == 200
    versions = s.get(f"{stack.base_url}/api/2.0/mlflow/registered-models/get",
                     params={"name": "alice-doubler"})
    assert versions.status_code == 200


def test_an_experiment_a_user_just_created_is_theirs_at_once(stack: Stack, alice):
    """Creating grants its creator MANAGE; the very next request, on whichever MLflow worker,
    honours it (each worker's memory of grants hears of the change a moment later:
    auth_cache.confirm_refusals). Once failed in CI as a 403 from MLflow's own client."""
    s = stack.session(*alice)
    for attempt in range(30):
        created = s.post(f"{stack.base_url}/api/2.0/mlflow/experiments/create",
                         json={"name": f"alice-at-once-{attempt}"})
        assert created.status_code == 200, created.text
        got = s.get(f"{stack.base_url}/api/2.0/mlflow/experiments/get",
                    params={"experiment_id": created.json()["experiment_id"]})
        assert got.status_code == 200, (attempt, got.text)
