"""Bad input and known attack shapes, sent through the front door as a plain user would, and
from inside the platform's network: every one answered 4xx (never a server error, never a file
it should not give), the bounds per path hold, each service holds only its own secrets, and
the stack is healthy afterwards."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import uuid

import pytest
from cryptography import x509

from .stack import Stack


@pytest.fixture(scope="module")
def kai(stack: Stack):
    return stack.user("kai")


@pytest.fixture(scope="module")
def lena(stack: Stack):
    return stack.user("lena")


LOG_A_RUN = """
import json, mlflow, os, tempfile
mlflow.set_experiment(os.environ["EXPERIMENT"])
with mlflow.start_run() as run:
    path = os.path.join(tempfile.mkdtemp(), "secret.txt")
    open(path, "w").write("lena's private file")
    mlflow.log_artifact(path, "model")
print(json.dumps({"run": run.info.run_id, "experiment": run.info.experiment_id}))
"""


def log_a_run(stack: Stack, user, experiment: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", LOG_A_RUN], capture_output=True, text=True,
                         env={**stack.client_env(*user), "EXPERIMENT": experiment},
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lenas_run(stack: Stack, lena) -> dict[str, str]:
    return log_a_run(stack, lena, "lena-private")


@pytest.fixture(scope="module")
def kais_run(stack: Stack, kai) -> dict[str, str]:
    return log_a_run(stack, kai, "kai-own")


YAML_BOMB = b"""a: &a [x,x,x,x,x,x,x,x,x]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]
"""


def malformed_requests(run: str, experiment: str) -> list[tuple[str, str, dict]]:
    """(method, path, requests keyword arguments): malformed JSON, wrong types, huge values and
    odd paths for the REST, jobs and artifact APIs."""
    api, jobs = "/api/2.0/mlflow", "/trainer/api"
    bodies = ["{", "[]", "null", '"text"', "1e999", "[" * 5000 + "]" * 5000, "\x00\xff",
              json.dumps({"a": "b" * 100_000})]
    typed = [
        ("experiments/create", {"name": {"nested": 1}}),
        ("experiments/create", {"name": "x" * 100_000}),
        ("runs/create", {"experiment_id": [1, 2], "start_time": "yesterday"}),
        ("runs/create", {"experiment_id": "99999999999999999999999"}),
        ("runs/log-metric", {"run_id": run, "key": "m", "value": "NaN-ish", "timestamp": "now"}),
        ("runs/log-metric", {"run_id": run, "key": "m", "value": 1, "timestamp": 2 ** 70}),
        ("runs/log-metric", {"run_id": run, "key": "../" * 100, "value": 1, "timestamp": 1}),
        ("runs/log-batch", {"run_id": run, "metrics": "all of them"}),
        ("runs/log-batch", {"run_id": run, "metrics": [{"key": "m"}] * 2000}),
        ("runs/log-batch", {"run_id": run, "params": [{"key": "p", "value": "v" * 100_000}]}),
        ("runs/set-tag", {"run_id": run, "key": None, "value": {"x": 1}}),
        ("runs/update", {"run_id": run, "status": "EXPLODED"}),
        ("runs/search", {"experiment_ids": [experiment], "max_results": -1}),
        ("runs/search", {"experiment_ids": [experiment], "max_results": 10 ** 12}),
        ("runs/search", {"experiment_ids": [experiment], "filter": "metrics.m = '"}),
        ("runs/search", {"experiment_ids": [experiment],
                         "order_by": ["start_time; DROP TABLE runs;--"]}),
        ("runs/search", {"experiment_ids": "not-a-list"}),
        ("experiments/search", {"max_results": "many", "filter": "name LIKE"}),
        ("registered-models/create", {"name": ""}),
        ("model-versions/create", {"name": "nope", "source": 12}),
        ("model-versions/create", {"name": "nope", "source": "runs:/" + "a" * 10_000}),
    ]
    requests_: list[tuple[str, str, dict]] = []
    for endpoint in ("experiments/create", "runs/create", "runs/log-batch", "runs/search"):
        for body in bodies:
            requests_.append(("POST", f"{api}/{endpoint}", {
                "data": body.encode("utf-8", "surrogateescape"),
                "headers": {"Content-Type": "application/json"}}))
    requests_ += [("POST", f"{api}/{endpoint}", {"json": body}) for endpoint, body in typed]
    requests_ += [("GET", f"{api}/{endpoint}", {"params": params}) for endpoint, params in [
        ("runs/get", {"run_id": "../../etc/passwd"}),
        ("runs/get", {"run_id": "\x00"}),
        ("experiments/get", {"experiment_id": "-1"}),
        ("experiments/get", {"experiment_id": "1" * 400}),
        ("experiments/get-by-name", {"experiment_name": "%" * 3000}),
        ("metrics/get-history", {"run_id": run, "metric_key": "m", "max_results": "x"}),
        ("artifacts/list", {"run_id": run, "path": "../../.."}),
        ("artifacts/list", {"run_id": run, "path": "/etc"}),
        ("registered-models/search", {"max_results": 10 ** 9}),
        ("model-versions/get", {"name": "nope", "version": "one"}),
    ]]
    requests_ += [
        # The jobs API: garbage specs, a YAML bomb, wrong types, odd ids and offsets.
        ("POST", f"{jobs}/jobs", {"data": b"{{{{", "headers": {"Content-Type": "application/yaml"}}),
        ("POST", f"{jobs}/jobs", {"data": YAML_BOMB, "headers": {"Content-Type": "application/yaml"}}),
        ("POST", f"{jobs}/jobs", {"json": {"experiment": ["x"], "entrypoint": 5, "epochs": "ten"}}),
        ("POST", f"{jobs}/jobs", {"files": {"code": ("code.tar.gz", b"not a tarball")}}),
        ("POST", f"{jobs}/jobs", {"files": {
            "spec": ("job.yaml", b"experiment: x\nentrypoint: script:train.py\n"),
            "code": ("code.tar.gz", b"\x1f\x8b" + b"\x00" * 100)}}),
        ("GET", f"{jobs}/jobs/abc", {}),
        ("GET", f"{jobs}/jobs/-1", {}),
        ("GET", f"{jobs}/jobs/{10 ** 30}", {}),
        ("GET", f"{jobs}/jobs/1/logs", {"params": {"offset": "-5"}}),
        ("GET", f"{jobs}/jobs/1/logs", {"params": {"offset": "x" * 1000}}),
        ("POST", f"{jobs}/jobs/abc/cancel", {}),
        # The artifact APIs: odd paths and parameters.
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/" + "a/" * 3000 + "x", {"data": b"x"}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/%00x", {"data": b"x"}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/a%5c..%5c..%5cx",
         {"data": b"x"}),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts", {"params": {"path": "\x00"}}),
        ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/missing.txt", {}),
        ("GET", "/get-artifact", {}),
        ("GET", "/get-artifact", {"params": {"run_uuid": "nope", "path": "x"}}),
        ("GET", "/get-artifact", {"params": {"run_uuid": run, "path": "model/missing.bin"}}),
        ("GET", "/model-versions/get-artifact", {"params": {"name": "nope", "version": "x",
                                                            "path": "MLmodel"}}),
        ("GET", "/graphql", {"params": {"query": "{" * 500}}),
        ("POST", "/graphql", {"json": {"query": "query { " + " ".join(
            f"a{i}: mlflowGetRun(input: {{runId: \"{run}\"}}) {{ run {{ info {{ runId }} }} }}"
            for i in range(50)) + " }"}}),
        ("POST", "/graphql", {"data": b"{", "headers": {"Content-Type": "application/json"}}),
        # Odd paths and methods.
        ("GET", "/%ff%fe", {}),
        ("GET", "/api/2.0/mlflow/" + "a" * 6000, {}),
        ("GET", "//..//..//etc/passwd", {}),
        ("TRACE", "/", {}),
        ("PROPFIND", "/api/2.0/mlflow/runs/get", {}),
        ("DELETE", f"{api}/experiments/search", {}),
    ]
    return requests_


def test_bad_input_gets_4xx_and_the_stack_stays_healthy(stack: Stack, kai, kais_run):
    s = stack.session(*kai)
    server_errors = []
    for method, path, kwargs in malformed_requests(kais_run["run"], kais_run["experiment"]):
        r = s.request(method, f"{stack.base_url}{path}", timeout=60, **kwargs)
        if r.status_code >= 500:
            server_errors.append((method, path[:120], r.status_code, r.text[:300]))
        assert "root:x:0:0" not in r.text
    assert not server_errors, json.dumps(server_errors, indent=1)
    # Still healthy: every service, and kai's run as it was.
    assert s.get(f"{stack.base_url}/api/2.0/mlflow/runs/get",
                 params={"run_id": kais_run["run"]}).status_code == 200
    unhealthy = {name: row.get("Health") for name, row in stack.services().items()
                 if row.get("State") == "running" and row.get("Health") not in ("", "healthy")}
    assert not unhealthy, unhealthy


def test_published_mlflow_attack_shapes_are_refused(stack: Stack, kai, kais_run, lenas_run):
    """The request shapes of MLflow's published path-traversal, local-file and SSRF
    vulnerabilities (CVE-2023-1177, -2780, -6015, -6909, -6977; CVE-2024-1483, -1560, -1594,
    -3573), and reading another user's artifacts by naming them: refused."""
    s = stack.session(*kai)
    base, api = stack.base_url, f"{stack.base_url}/api/2.0/mlflow"
    theirs, mine = lenas_run, kais_run
    model = f"kai-cve-{uuid.uuid4().hex[:6]}"
    assert s.post(f"{api}/registered-models/create", json={"name": model}).ok
    refused = []

    def expect(r, codes=(400, 403, 404)):
        if r.status_code not in codes or "root:x:0:0" in r.text or "lena's private" in r.text:
            refused.append((r.request.method, r.request.url[:160], r.status_code, r.text[:200]))

    # Local file inclusion and SSRF through a model version's source (then get-artifact).
    for source in ("file:///etc/passwd", "//etc/passwd", "/etc/passwd#", "file:///etc#/../",
                   "mlflow-artifacts:/../../../etc", "http://169.254.169.254/latest/meta-data/",
                   f"mlflow-artifacts:/{mine['experiment']}/{mine['run']}/artifacts/%2e%2e/%2e%2e",
                   f"runs:/{mine['run']}/../../../../etc",
                   f"s3://mlflow-artifacts/{theirs['experiment']}/{theirs['run']}/artifacts"):
        expect(s.post(f"{api}/model-versions/create", json={"name": model, "source": source}))
    # An experiment whose artifact location points elsewhere (local files, another host,
    # another experiment's folder, with a fragment or dots).
    for location in ("file:///etc", "http://169.254.169.254/", "/var/lib/mlstack/secrets",
                     f"mlflow-artifacts:/{theirs['experiment']}",
                     f"s3://mlflow-artifacts/{theirs['experiment']}/{theirs['run']}#x",
                     "mlflow-artifacts:/1/../../"):
        expect(s.post(f"{api}/experiments/create",
                      json={"name": f"kai-{uuid.uuid4().hex[:6]}", "artifact_location": location}))
    # Path traversal in the artifact handlers, plain and encoded.
    for path in ("../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "model/../../../",
                 "/etc/passwd", "model#/../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"):
        expect(s.get(f"{base}/get-artifact", params={"run_uuid": mine["run"], "path": path}))
        expect(s.get(f"{api}/artifacts/list", params={"run_id": mine["run"], "path": path}))
    for raw in (f"{mine['experiment']}/../{theirs['experiment']}/{theirs['run']}/artifacts/model/secret.txt",
                f"{mine['experiment']}/%2e%2e/{theirs['experiment']}/{theirs['run']}/artifacts/model/secret.txt",
                f"{mine['experiment']}/..%2f{theirs['experiment']}/{theirs['run']}/artifacts/model/secret.txt",
                "..%2f..%2f..%2fetc/passwd"):
        expect(s.get(f"{base}/api/2.0/mlflow-artifacts/artifacts/{raw}"))
        expect(s.put(f"{base}/api/2.0/mlflow-artifacts/artifacts/{raw}", data=b"overwritten"))
    # Another user's artifacts, named outright: read, list, overwrite, delete.
    their_file = f"{theirs['experiment']}/{theirs['run']}/artifacts/model/secret.txt"
    expect(s.get(f"{base}/api/2.0/mlflow-artifacts/artifacts/{their_file}"), (403,))
    expect(s.put(f"{base}/api/2.0/mlflow-artifacts/artifacts/{their_file}", data=b"x"), (403,))
    expect(s.delete(f"{base}/api/2.0/mlflow-artifacts/artifacts/{their_file}"), (403,))
    expect(s.get(f"{base}/api/2.0/mlflow-artifacts/artifacts",
                 params={"path": f"{theirs['experiment']}/{theirs['run']}/artifacts"}), (403,))
    expect(s.get(f"{base}/get-artifact", params={"run_uuid": theirs["run"],
                                                 "path": "model/secret.txt"}), (403,))
    # The UI's gateway proxy is no way out to other hosts (no gateway is configured: MLflow
    # answers an empty list and sends nothing anywhere).
    r = s.post(f"{base}/ajax-api/2.0/mlflow/gateway-proxy",
               json={"gateway_path": "latest/meta-data", "json_data": {}})
    assert r.status_code in (400, 403, 404) or r.json() == {"endpoints": []}, r.text
    assert not refused, json.dumps(refused, indent=1)
    # lena's file is intact.
    lena = stack.session(*stack.user("lena"))
    r = lena.get(f"{base}/api/2.0/mlflow-artifacts/artifacts/{their_file}")
    assert r.status_code == 200 and r.text == "lena's private file"


def declared_body_status(stack: Stack, user, method: str, path: str, length: int,
                         content_type: str = "application/json",
                         timeout: float = 30) -> tuple[int, str]:
    """nginx's answer to a request that announces a body of `length` bytes (none is sent: a
    bound refuses on the announcement alone)."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    conn = http.client.HTTPSConnection("localhost", stack.https_port, context=context,
                                       timeout=timeout)
    import base64
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    conn.putrequest(method, path)
    conn.putheader("Authorization", f"Basic {token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode(errors="replace")
    conn.close()
    return response.status, body


def test_bodies_are_bounded_per_path(stack: Stack, kai, kais_run):
    mb = 1 << 20
    # MLflow's JSON APIs: 16 MB; GraphQL: 64 KB; other paths (TensorBoard's index): 1 MB.
    assert declared_body_status(stack, kai, "POST", "/api/2.0/mlflow/runs/log-batch",
                                17 * mb)[0] == 413
    assert declared_body_status(stack, kai, "POST", "/graphql", 65 * 1024)[0] == 413
    assert declared_body_status(stack, kai, "POST", "/tensorboard/", 2 * mb)[0] == 413
    # Job uploads: past twice TRAINER_MAX_CODE_MB (50 by default) nginx refuses, and says why.
    status, body = declared_body_status(stack, kai, "POST", "/trainer/api/jobs", 103 * mb,
                                        "multipart/form-data; boundary=x")
    assert status == 413 and "TRAINER_MAX_CODE_MB" in json.loads(body)["error"], body
    # Artifacts: no bound (the 200 MiB upload in test_platform goes through): the announcement
    # of 50 GB into kai's own run is not refused; MLflow waits for the body.
    with pytest.raises(TimeoutError):
        declared_body_status(stack, kai, "PUT", "/api/2.0/mlflow-artifacts/artifacts/"
                             f"{kais_run['experiment']}/{kais_run['run']}/artifacts/huge.bin",
                             50 << 30, "application/octet-stream", timeout=5)


def test_a_client_that_stops_sending_its_body_is_cut_off(stack: Stack, kai):
    """A JSON request whose body never finishes ties up nginx for client_body_timeout (30 s),
    not an MLflow thread for good: nginx reads the whole body before MLflow sees it."""
    import base64
    import time

    context = ssl.create_default_context(cafile=str(stack.ca_file))
    conn = http.client.HTTPSConnection("localhost", stack.https_port, context=context,
                                       timeout=120)
    conn.putrequest("POST", "/api/2.0/mlflow/runs/search")
    conn.putheader("Authorization", "Basic " + base64.b64encode(
        f"{kai[0]}:{kai[1]}".encode()).decode())
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    conn.send(b'{"experiment_ids": [')
    started = time.monotonic()
    try:
        status = conn.getresponse().status
    except (ConnectionError, http.client.RemoteDisconnected):
        status = None  # closed without an answer
    waited = time.monotonic() - started
    assert status in (None, 408) and 25 < waited < 60, (status, waited)


def test_a_forged_client_address_from_inside_the_network_counts_as_its_sender(stack: Stack):
    """A service on MLflow's network other than nginx (here TensorBoard's container, as a
    compromised one would) cannot spread guesses over made-up addresses: X-Real-IP is believed
    from nginx alone."""
    stack.user("mona")
    probe = """
import base64, urllib.request, urllib.error
codes = []
for i in range(12):
    request = urllib.request.Request("http://mlflow:5000/api/2.0/mlflow/users/current", headers={
        "Authorization": "Basic " + base64.b64encode(b"mona:guess-%d" % i).decode(),
        "X-Real-IP": "10.7.7.%d" % i, "X-Forwarded-For": "10.7.7.%d" % i})
    try:
        codes.append(urllib.request.urlopen(request, timeout=30).status)
    except urllib.error.HTTPError as exc:
        codes.append(exc.code)
print(codes)
"""
    out = stack.compose("exec", "-T", "tensorboard", "python", "-c", probe).stdout
    codes = json.loads(out.strip().splitlines()[-1])
    assert codes[:10] == [401] * 10 and codes[-1] == 429, codes
    stack.script("users", "unblock", "mona")


SERVICE_SECRET_FILES = {  # service: (its secrets folder, what it holds)
    "postgres": ("secrets", {"postgres_password"}),
    "minio": ("secrets", {"minio_root_user", "minio_root_password"}),
    "mlflow": ("secrets", {"mlflow_db_password", "s3_access_key", "s3_secret_key",
                           "flask_secret_key", "admin_username"}),
    "janitor": ("secrets", {"mlflow_db_password", "s3_access_key", "s3_secret_key"}),
    "tensorboard": ("tensorboard-secrets", {"tensorboard_db_password"}),
    "trainer-api": ("trainer-secrets", {"trainer_db_password", "trainer_mlflow_password",
                                        "public_origins"}),
    "trainer": ("worker-secrets", {"worker_mlflow_password", "ca.crt"}),
    "nginx": (None, set()),
}


def test_each_service_holds_only_its_own_secrets_and_no_ca_key(stack: Stack):
    """What a compromised service would find: its own secrets, nothing else; the CA's key, the
    admin password and the store's other secrets are in no long-running container."""
    for service, (folder, expected) in SERVICE_SECRET_FILES.items():
        found = stack.compose("exec", "-T", service, "sh", "-c", (
            f"ls -A /var/lib/mlstack/{folder}; " if folder else "") +
            "find / -xdev \\( -name ca.key -o -name admin_password -o -name postgres_password "
            "-o -name minio_root_password -o -name trainer_mlflow_password "
            "-o -name worker_mlflow_password \\) -type f "
            "2>/dev/null | grep -v '^/var/lib/mlstack/' ; true").stdout.split()
        assert set(found) == expected, (service, set(found) ^ expected)
    # The CA's volume is mounted by init-secrets alone.
    project = stack.compose("config", "--format", "json")
    config = json.loads(project.stdout)
    holders = {name for name, service in config["services"].items()
               if any(v.get("source") == "ca" for v in service.get("volumes", []))}
    assert holders == {"init-secrets"}


def test_the_ca_may_certify_the_platforms_names_alone(stack: Stack):
    """Trusting the platform's CA trusts it for the platform and nothing else."""
    ca = x509.load_pem_x509_certificate(stack.ca_file.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    permitted = {str(getattr(n.value, "compressed", n.value))
                 for n in constraints.value.permitted_subtrees}
    assert permitted == {"localhost", "127.0.0.1/32", "mlstack.internal"}, permitted


@pytest.mark.parametrize("field", ["model_id", "modelId"])
def test_a_batch_from_ones_own_run_cannot_write_to_someone_elses_logged_model(
        stack: Stack, kai, lena, kais_run, lenas_run, field):
    """Log-batch's permission check reads the metrics' logged-model ids from the JSON body
    (permission_cache.py); either spelling naming lena's model is refused to kai, through nginx."""
    api = f"{stack.base_url}/api/2.0/mlflow"
    as_kai, as_lena = stack.session(*kai), stack.session(*lena)
    created = as_lena.post(f"{api}/logged-models",
                           json={"experiment_id": lenas_run["experiment"]})
    assert created.ok, created.text
    lenas_model = created.json()["model"]["info"]["model_id"]

    def batch(session, run, model_id):
        return session.post(f"{api}/runs/log-batch", json={"run_id": run, "metrics": [
            {"key": "acc", "value": 0.9, "timestamp": 1, "step": 0, field: model_id}]})

    assert batch(as_kai, kais_run["run"], lenas_model).status_code == 403
    assert batch(as_lena, lenas_run["run"], lenas_model).status_code == 200
    model = as_lena.get(f"{api}/logged-models/{lenas_model}").json()["model"]
    assert all(m.get("run_id") != kais_run["run"] for m in model.get("data", {}).get("metrics", []))
