"""Drives the real docker-compose.yml for the end-to-end tests, as an operator would: the same
commands, under its own compose project name so it can run beside a real stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]

# Settings of the machine the tests run on that would make a client trust more than the CA
# file we give it (this CI machine sets several); a team member's shell has none of them.
CLIENT_ENV_DROP = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                   "AWS_CA_BUNDLE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def docker(*args: str) -> str:
    """The docker CLI's output; raises if it fails."""
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    project: str
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlstack-e2e-")))
    # Settings on top of the defaults below, as an operator's .env would set them.
    settings: dict[str, str] = field(default_factory=dict)
    # The directory holding the compose file: another checkout for the upgrade test.
    root: Path = ROOT
    # The name clients use for the front door (the benchmark uses the machine's own address).
    host: str = "localhost"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            MLSTACK_BIND_ADDRESS="127.0.0.1",
            MLSTACK_HTTPS_PORT=str(self.https_port),
            MLSTACK_HTTP_PORT=str(self.http_port),
            # Fewer workers than the default: the CI machine has two cores.
            MLFLOW_WORKERS="2",
            # A killed trainer's job is noticed after this long (default 60 s).
            TRAINER_LEASE_SECONDS="15",
            # The sample module: and project: jobs, as an operator's host directory.
            TRAINER_PROJECTS=str(ROOT / "trainer" / "examples" / "projects"),
            MLSTACK_BACKUP_DIR=str(self.workdir / "backups"),
            # scripts/status alerts on a disk this full. The machine's disk is shared with
            # whatever else runs there (the CI machine's was 92 % full), so the stacks under
            # test alert only on a full one; test_operations checks the alert itself.
            MLSTACK_DISK_ALERT_PERCENT="100",
        )
        env.update(self.settings)
        return env

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "mlstack-ca.pem"

    def compose(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 900) -> subprocess.CompletedProcess[str]:
        # --env-file: an empty one, so a developer's own .env cannot change what is tested.
        empty_env = self.workdir / "empty.env"
        empty_env.touch()
        return subprocess.run(
            ["docker", "compose", "--env-file", str(empty_env), *args], cwd=self.root, env=self.env,
            text=True, capture_output=True, check=check, input=input, timeout=timeout)

    def script(self, name: str, *args: str, input: str | None = None, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """scripts/NAME of this stack's checkout, as the operator runs it (no terminal)."""
        env = {**self.env, "COMPOSE_ENV_FILES": str(self.workdir / "empty.env")}
        result = subprocess.run([str(self.root / "scripts" / name), *args], cwd=self.root,
                                env=env, text=True, capture_output=True, input=input,
                                timeout=timeout, stdin=None if input is not None
                                else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"scripts/{name} {' '.join(args)} exited {result.returncode}:"
                                 f"\n{result.stdout}\n{result.stderr}")
        return result

    def up(self) -> None:
        self.compose("build", "--quiet", timeout=1800)
        self.compose("up", "-d", "--wait", "--wait-timeout", "600")
        self.ca_file.write_text(self.script("ca-cert").stdout)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)

    def diagnostics(self) -> str:
        ps = self.compose("ps", "--all", check=False).stdout
        logs = self.compose("logs", "--no-color", "--tail", "200", check=False).stdout
        return f"--- docker compose ps --all\n{ps}\n--- docker compose logs\n{logs}"

    def services(self) -> dict[str, dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):  # older Compose prints one array
            rows = rows[0]
        return {row["Service"]: row for row in rows}

    def user(self, name: str) -> tuple[str, str]:
        """A plain MLflow user (scripts/users create), or the one an earlier module made."""
        password = f"{name}-has-a-long-password"
        self.script("users", "create", name, "--password-stdin", input=password + "\n",
                    check=False)
        return name, password

    def admin(self) -> tuple[str, str]:
        values = dict(line.split("=", 1) for line in self.script("credentials").stdout.split())
        return values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"]

    def session(self, user: str | None = None, password: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # see CLIENT_ENV_DROP
        s.verify = str(self.ca_file)
        if user is not None:
            s.auth = (user, password or "")
        return s

    def client_env(self, user: str, password: str) -> dict[str, str]:
        """A team member's shell: only what the README tells them to export."""
        env = {k: v for k, v in os.environ.items()
               if k not in CLIENT_ENV_DROP and not k.startswith(("MLFLOW_", "AWS_"))}
        env.update(
            MLFLOW_TRACKING_URI=self.base_url,
            MLFLOW_TRACKING_USERNAME=user,
            MLFLOW_TRACKING_PASSWORD=password,
            MLFLOW_TRACKING_SERVER_CERT_PATH=str(self.ca_file),
        )
        return env

    def wait_for(self, what: str, check, timeout_s: float = 90, every_s: float = 2):
        deadline = time.monotonic() + timeout_s
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(every_s)
