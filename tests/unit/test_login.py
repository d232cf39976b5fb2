"""Password guessing against the platform's MLflow app (a real server under gunicorn, its
real authorization function): failures limited per address and user name, nobody else held up,
and unknown user names refused as slowly as wrong passwords."""

from __future__ import annotations

import statistics
import time

import pytest
import requests
from mlflow.server.auth.client import AuthServiceClient
from sqlalchemy import create_engine

from mlstack_platform import login

from .conftest import ADMIN

CARL = ("carl", "carl-password-for-tests")
DANA = ("dana", "dana-password-for-tests")


@pytest.fixture(scope="module")
def app(mlstack_app):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        for username, password in (CARL, DANA):
            AuthServiceClient(mlstack_app["uri"]).create_user(username, password)
    return mlstack_app


def current(app, user, address: str) -> requests.Response:
    # X-Real-IP: the client address nginx passes on.
    return requests.get(f"{app['uri']}/api/2.0/mlflow/users/current", auth=user, timeout=30,
                        headers={"X-Real-IP": address})


def test_guessing_a_password_is_stopped_and_nobody_else_is_held_up(app):
    assert current(app, CARL, "10.9.0.1").status_code == 200  # carl's client, logged in
    wrong = (CARL[0], "not-carls-password")
    codes = [current(app, wrong, "10.9.0.66").status_code for _ in range(12)]
    assert codes[:9] == [401] * 9
    assert codes[10:] == [429, 429], codes
    blocked = current(app, wrong, "10.9.0.66")
    assert blocked.status_code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 300
    # Blocked, even with the right password, which is not checked: the address learns nothing
    # more about carl's password.
    assert current(app, CARL, "10.9.0.66").status_code == 429
    # Nobody else is held up: carl from elsewhere (his client that logged in before, and a new
    # one), dana from the same address.
    assert current(app, CARL, "10.9.0.2").status_code == 200
    assert current(app, DANA, "10.9.0.66").status_code == 200
    assert current(app, CARL, "10.9.0.1").status_code == 200
    # An admin lifts the block (scripts/users unblock carl).
    assert login.unblock(create_engine(f"sqlite:///{app['db'].parent / 'auth.db'}"), "carl") >= 1
    assert current(app, wrong, "10.9.0.66").status_code == 401


def test_an_unknown_user_is_refused_as_slowly_as_a_wrong_password(app):
    def median_ms(user) -> float:
        times = []
        for i in range(7):
            started = time.perf_counter()
            assert current(app, user, f"10.9.1.{i}").status_code == 401
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    median_ms((DANA[0], "warm-up-password"))
    known = median_ms((DANA[0], "a-wrong-password"))
    unknown = median_ms(("nobody-by-this-name", "a-wrong-password"))
    # Both pay one password hash (tens of ms); without the dummy hash an unknown name costs
    # a few ms. Tolerant of a noisy machine: within half of each other.
    assert 0.5 < unknown / known < 2, (known, unknown)


def test_a_forged_client_address_counts_only_from_the_trusted_proxy(app):
    """X-Real-IP is nginx's word. Any other peer (here 127.0.0.2, as TensorBoard or the jobs API
    would be on the platform's network) that sends a new address with each guess is counted by
    its own address all the same, and blocked."""
    import base64
    import http.client
    from urllib.parse import urlsplit

    uri = urlsplit(app["uri"])
    token = base64.b64encode(f"{DANA[0]}:not-danas-password".encode()).decode()

    def guess(i: int) -> int:
        conn = http.client.HTTPConnection(uri.hostname, uri.port, timeout=30,
                                          source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/api/2.0/mlflow/users/current", headers={
                "Authorization": f"Basic {token}", "X-Real-IP": f"10.9.2.{i}"})
            return conn.getresponse().status
        finally:
            conn.close()

    codes = [guess(i) for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # Dana herself, through nginx (the trusted peer), from her own address, is not held up.
    assert current(app, DANA, "10.9.2.200").status_code == 200
    login.unblock(create_engine(f"sqlite:///{app['db'].parent / 'auth.db'}"), DANA[0])
