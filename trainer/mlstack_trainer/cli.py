"""`mlstack`: submit and follow training jobs from your own machine.

Uses the same settings as the MLflow client: MLFLOW_TRACKING_URI (the platform's address),
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and, for the platform's self-signed
certificate, MLFLOW_TRACKING_SERVER_CERT_PATH (its CA file: `scripts/ca-cert > mlstack-ca.pem`
on the platform) or MLFLOW_TRACKING_INSECURE_TLS=true (no verification). These win over
REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE; HTTPS_PROXY / NO_PROXY apply as usual.

  mlstack submit job.yaml [--code DIR] [--follow]
                               queue a job; prints its id. --code uploads DIR (minus what
                               .gitignore, .git, caches and virtualenvs hold) with its git
                               commit; --follow then prints the log and exits 0 only if the
                               job succeeded
  mlstack jobs [--all]         your jobs (an admin's --all: everyone's)
  mlstack show ID              one job, with its MLflow and TensorBoard links
  mlstack logs ID [-f]         its output; -f follows until the job ends
  mlstack cancel ID            cancel a queued or running job
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import requests
import urllib3

from mlstack_trainer import codepack
from mlstack_trainer.states import FINAL, JobState

CA_HINT = ("set MLFLOW_TRACKING_SERVER_CERT_PATH to the platform's CA file "
           "(`scripts/ca-cert > mlstack-ca.pem` on the platform)")


class CliError(Exception):
    """A failure the user can act on; main prints it as `error: <message>` and exits 1."""


def _flag(name: str) -> bool:
    """MLflow's boolean environment variables: true/false/1/0, any case."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise CliError(f"{name} must be true or false, not {os.environ[name]!r}")


def tls_verify() -> bool | str:
    """`verify` exactly as MLflow's rest_utils computes it: the CA file, or not insecure."""
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
    if _flag("MLFLOW_TRACKING_INSECURE_TLS"):
        if cert_path:
            raise CliError("set only one of MLFLOW_TRACKING_INSECURE_TLS and "
                           "MLFLOW_TRACKING_SERVER_CERT_PATH")
        # The user asked for it; a warning on every log poll would drown the job's output.
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        return False
    if cert_path and not os.path.isfile(cert_path):
        raise CliError(f"MLFLOW_TRACKING_SERVER_CERT_PATH: no file {cert_path}")
    return cert_path or True


def _body_line(r: requests.Response) -> str:
    """The server's message: JSON's "error", else the first line of text (nginx sends HTML)."""
    try:
        body = r.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    for text in re.sub(r"<[^>]+>", " ", r.text).splitlines():
        if text.strip():
            return text.strip()[:200]
    return r.reason or "(empty answer)"


class Api:
    def __init__(self) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
        if not uri.startswith(("http://", "https://")):
            raise CliError("set MLFLOW_TRACKING_URI to the platform's address "
                           "(e.g. https://mlflow.example.com)")
        self.base = uri + "/trainer/api"
        # Passed on every request: with trust_env (kept for proxies) requests replaces a
        # verify of None or True by REQUESTS_CA_BUNDLE, so session.verify alone would lose.
        self.verify = tls_verify()
        self.cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None
        try:
            self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)
        except ValueError:
            raise CliError("MLFLOW_HTTP_REQUEST_TIMEOUT must be a number of seconds") from None
        self.session = requests.Session()
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user or password:  # as MLflow: no credentials, no Authorization header
            self.session.auth = (user or "", password or "")

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base + path
        try:
            r = self.session.request(method, url, timeout=self.timeout, verify=self.verify,
                                     cert=self.cert, **kwargs)
        # SSLError and ConnectTimeout are ConnectionErrors too: the specific ones come first.
        except requests.exceptions.SSLError as e:
            reason = re.search(r"certificate verify failed: ([^)('\"]+)", str(e))
            if reason:
                raise CliError(f"TLS certificate of {self.base} not trusted "
                               f"({reason.group(1).strip()}): {CA_HINT}") from None
            raise CliError(f"TLS connection to {self.base} failed; check MLFLOW_TRACKING_URI "
                           "(http or https?)") from None
        except requests.exceptions.Timeout:
            raise CliError(f"no answer from {url} within {self.timeout:g}s; check "
                           "MLFLOW_TRACKING_URI or raise MLFLOW_HTTP_REQUEST_TIMEOUT") from None
        except requests.exceptions.ConnectionError as e:
            why = ("unknown host" if "NameResolution" in str(e) or "getaddrinfo" in str(e)
                   else "connection refused or dropped")
            raise CliError(f"cannot reach {self.base} ({why}); check MLFLOW_TRACKING_URI") from None
        except requests.exceptions.RequestException as e:
            raise CliError(f"request to {url} failed: {type(e).__name__}: {e}") from None
        if r.status_code < 400:
            return r
        message = _body_line(r)
        if r.status_code == 401:
            raise CliError("not logged in: check MLFLOW_TRACKING_USERNAME / "
                           "MLFLOW_TRACKING_PASSWORD")
        if r.status_code == 403:
            raise CliError(message if message.lower().startswith("not allowed")
                           else f"not allowed: {message}")
        if r.status_code == 400:
            problems = ""
            try:
                problems = "".join(f"\n  - {p}" for p in r.json().get("problems") or [])
            except (ValueError, AttributeError):
                pass
            raise CliError(message + problems)
        if r.status_code == 413:
            hint = ("" if "TRAINER_MAX_CODE_MB" in message else
                    "; set TRAINER_MAX_CODE_MB on the platform or add files to .gitignore")
            raise CliError(f"too large for the platform: {message}{hint}")
        raise CliError(f"{r.status_code} from {method} {url}: {message}")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.call(method, path, **kwargs)
        try:
            return r.json()
        except ValueError:
            kind = r.headers.get("Content-Type", "no content type")
            raise CliError(f"expected JSON from {r.url}, got {kind}: {_body_line(r)}; "
                           "is MLFLOW_TRACKING_URI the platform's address?") from None


def line(job: dict) -> str:
    return (f"{job['id']:>6}  {job['state']:<10} {job['name']:<24} {job['submitter']:<12} "
            f"{job.get('worker') or '-':<20} {job.get('mlflow_run_id') or '-'}")


def _size(n: int) -> str:
    # Powers of 1024, assuming the platform turns TRAINER_MAX_CODE_MB into bytes that way.
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KB"


def _too_large(directory: str, e: codepack.TooLarge) -> CliError:
    biggest = "".join(f"\n  {_size(size):>10}  {rel}" for rel, size in e.biggest())
    return CliError(f"code in {directory} packs to more than the platform's limit of "
                    f"{_size(e.limit)} ({e.limit} bytes); biggest files:{biggest}\n"
                    "set TRAINER_MAX_CODE_MB on the platform or add them to .gitignore")


def submit(api: Api, spec_file: str, code: str | None) -> dict:
    try:
        spec = Path(spec_file).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read spec file {spec_file}: {e.strerror}") from None
    if code is None:
        return api.json("POST", "/jobs", data=spec, headers={"Content-Type": "application/yaml"})
    if not Path(code).is_dir():
        raise CliError(f"code directory {code} not found")
    limit = int(api.json("GET", "/config")["max_code_bytes"])
    try:
        packed = codepack.pack(Path(code), limit)
    except codepack.TooLarge as e:
        raise _too_large(code, e) from None
    except codepack.PackError as e:
        raise CliError(str(e)) from None
    print(f"packed {len(packed.files)} files from {code}: {_size(packed.size)}", file=sys.stderr)
    source = codepack.git_source(Path(code))
    with packed.archive:
        return api.json("POST", "/jobs",
                        data={"source": json.dumps(source)} if source else None,
                        files={"spec": (Path(spec_file).name, spec, "application/yaml"),
                               "code": ("code.tar.gz", packed.archive, "application/gzip")})


def print_logs(api: Api, job_id: int, follow: bool) -> None:
    offset = 0
    while True:
        r = api.call("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
        sys.stdout.buffer.write(r.content)
        sys.stdout.flush()
        try:
            offset, state = int(r.headers["X-Next-Offset"]), r.headers["X-Job-State"]
        except (KeyError, ValueError):
            raise CliError(f"{r.url} answered without X-Next-Offset / X-Job-State; "
                           "is MLFLOW_TRACKING_URI the platform's address?") from None
        if not follow or (state in FINAL and not r.content):
            return
        if not r.content:
            time.sleep(1)


def follow_job(api: Api, job_id: int) -> int:
    print_logs(api, job_id, follow=True)
    job = api.json("GET", f"/jobs/{job_id}")
    state = job.get("state")
    error = f": {job.get('error') or 'no error given'}" if state == "failed" else ""
    print(f"job {job_id} {state}{error}", file=sys.stderr)
    return 0 if state == JobState.SUCCEEDED else 1


def run(args: argparse.Namespace) -> int:
    api = Api()
    if args.command == "submit":
        job = submit(api, args.spec_file, args.code)
        print(job["id"], flush=True)
        if args.follow:
            try:
                return follow_job(api, job["id"])
            except KeyboardInterrupt:
                print(f"\nstopped following; job {job['id']} goes on "
                      f"(mlstack cancel {job['id']} stops it)", file=sys.stderr)
                return 130
    elif args.command == "jobs":
        for job in api.json("GET", "/jobs", params={"all": "1"} if args.all else None)["jobs"]:
            print(line(job))
    elif args.command == "show":
        print(json.dumps(api.json("GET", f"/jobs/{args.id}"), indent=2))
    elif args.command == "cancel":
        print(api.json("POST", f"/jobs/{args.id}/cancel")["state"])
    elif args.command == "logs":
        print_logs(api, args.id, args.follow)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlstack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    submit_p = sub.add_parser("submit", help="queue a job")
    submit_p.add_argument("spec_file")
    submit_p.add_argument("--code", metavar="DIR",
                          help="upload DIR (honouring .gitignore) for the job to run")
    submit_p.add_argument("-f", "--follow", action="store_true",
                          help="print the log until the job ends; exit 0 only if it succeeded")
    sub.add_parser("jobs", help="list jobs").add_argument("--all", action="store_true")
    for name in ("show", "cancel"):
        sub.add_parser(name, help=f"{name} one job").add_argument("id", type=int)
    logs = sub.add_parser("logs", help="a job's output")
    logs.add_argument("id", type=int)
    logs.add_argument("-f", "--follow", action="store_true")
    args = p.parse_args(argv)
    try:
        return run(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as e:  # an answer without the fields the contract promises
        print(f"error: unexpected answer from the platform (missing {e}); is the CLI "
              "older than the platform?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mlstack jobs | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
