"""`mlstack-platform ROLE`: the roles of the platform image.

  secrets      first one-shot: generate or take from .env the secrets and the TLS certificate
  init         second one-shot: databases and roles, bucket, migrations, admin user
  serve        the MLflow server under gunicorn
  health       exit 0 when the MLflow server answers /health (the container healthcheck)
  users ...    list / create / set-password / delete / unblock MLflow users
  credentials  print the admin user name and password
  janitor      the janitor service: marks stale RUNNING runs FAILED, periodically
  janitor-check  exit 0 when the janitor's last pass is recent (its healthcheck)
  ops ...      for the operator scripts: bucket-export / bucket-import / bucket-usage,
               admin-password-check, gc
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.request

# Only what every role needs: the rest (boto3, cryptography, MLflow...) is imported by the roles
# that use it, so the health checks Docker runs every 10 s cost little (0.2 s of CPU each before).
from . import databases, s3_user, secrets_store, settings
from .config import PlatformConfig
from .settings import SettingError
from .waiting import DependencyUnavailable


def log(message: str) -> None:
    print(f"[mlstack] {message}", flush=True)


def run_secrets(config: PlatformConfig) -> None:
    from . import tls

    for name, what in secrets_store.ensure(settings.SECRETS_DIR).items():
        log(f"secret {name}: {what}")
    # Each service gets its own volume with the secrets it uses, never the rest. The jobs API
    # (trainer-api): its two; the workers, which run users' code, only their own credential
    # and the CA certificate that certifies the front door's internal name.
    for service, names in secrets_store.SERVICE_SECRETS.items():
        secrets_store.copy(names, settings.SECRETS_DIR, settings.SERVICE_SECRETS_ROOT / service)
    secrets_store.copy(secrets_store.TRAINER_API_SECRETS, settings.SECRETS_DIR,
                       settings.TRAINER_SECRETS_DIR)
    secrets_store.copy(secrets_store.WORKER_SECRETS, settings.SECRETS_DIR,
                       settings.WORKER_SECRETS_DIR, mode=0o640)
    secrets_store.copy(secrets_store.TENSORBOARD_SECRETS, settings.SECRETS_DIR,
                       settings.TENSORBOARD_SECRETS_DIR)
    # The volumes' own modes, whichever image's mount point Docker copied them from first (the
    # trainer and the platform image both have these folders): jobs must not even list them.
    settings.TRAINER_SECRETS_DIR.chmod(0o700)
    settings.WORKER_SECRETS_DIR.chmod(0o750)
    settings.TENSORBOARD_SECRETS_DIR.chmod(0o700)
    run_ca(config)
    source = tls.ensure(settings.TLS_DIR, settings.CA_DIR, config.hostnames,
                        config.user_tls_cert, config.user_tls_key)
    log(f"TLS certificate for {', '.join(config.hostnames)}: {source}")
    tls.ensure_internal(settings.TLS_DIR, settings.CA_DIR, tls.INTERNAL_HOSTNAME)
    publish_front_door_settings(config)
    tls.publish_ca(settings.CA_DIR, settings.WORKER_SECRETS_DIR)
    log(f"internal certificate for {tls.INTERNAL_HOSTNAME} (jobs and workers): ready")


def run_ca(config: PlatformConfig) -> None:
    """The CA in its own volume. Earlier releases kept it in the secrets store (and a backup
    of one restores it there): it moves, and leaves the store."""
    from . import tls

    old = settings.SECRETS_DIR / "ca"
    if (old / "ca.key").exists():
        settings.CA_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "ca.key"):
            data = (old / name).read_text()
            secrets_store.write_private(settings.CA_DIR / name, data.strip())
        for path in old.iterdir():
            path.unlink()
        old.rmdir()
        log("CA: moved from the secrets volume to its own")
    if tls.ensure_ca(settings.CA_DIR, config.hostnames):
        log("CA: NEW. It may certify these host names alone: "
            f"{', '.join(config.hostnames)} (and {tls.INTERNAL_HOSTNAME}). Every team member "
            "must trust it anew: scripts/ca-cert > mlstack-ca.pem (see README, HTTPS)")


def publish_front_door_settings(config: PlatformConfig) -> None:
    """Settings parsed here once, for the services that must agree on them: nginx's
    server_name and CORS origins (a comma or stray space in MLSTACK_HOSTNAMES never reaches
    nginx), the jobs API's public origins (the links it hands out, the Origins it accepts),
    and nginx's bound on job uploads."""
    server_names = settings.TLS_DIR / "server_names.conf"
    server_names.write_text(f"server_name {' '.join(config.hostnames)};\n")
    server_names.chmod(0o644)
    # nginx's CORS map: the platform's own origins are the only ones answered.
    cors = settings.TLS_DIR / "cors_origins.conf"
    cors.write_text("".join(f'"{origin}" $http_origin;\n' for origin in config.origins()))
    cors.chmod(0o644)
    origins = settings.TRAINER_SECRETS_DIR / "public_origins"
    origins.write_text("".join(f"{origin}\n" for origin in config.origins()))
    origins.chmod(0o644)
    # nginx's bound on a job submission: the jobs API reads up to twice its own limit (the
    # code, plus 1 MB for the spec) so that it can answer with a message; nginx refuses more.
    code_mb = settings.integer("TRAINER_MAX_CODE_MB", 50, minimum=1)
    limit = settings.TLS_DIR / "trainer_body_limit.conf"
    limit.write_text(f"client_max_body_size {2 * (code_mb + 1)}m;\n")
    limit.chmod(0o644)


def run_init(config: PlatformConfig) -> None:
    from . import bucket, tensorboard_sync

    server = config.superuser()
    databases.wait_until_ready(server, config.wait_s)
    role = databases.ensure_role(server, config.db_role, settings.secret("mlflow_db_password"))
    log(f"database role {config.db_role}: {role}")
    for db in (config.mlflow_db, config.auth_db):
        log(f"database {db}: {databases.ensure_database(server, db, config.db_role)}")
    # The trainer's job queue: its own role, so the trainer cannot touch MLflow's tables.
    trainer = databases.ensure_role(server, config.trainer_db,
                                    settings.secret("trainer_db_password"))
    log(f"database role {config.trainer_db}: {trainer}")
    log(f"database {config.trainer_db}: "
        f"{databases.ensure_database(server, config.trainer_db, config.trainer_db)}")

    # TensorBoard's role reads which runs and experiments are active (a deleted one leaves
    # TensorBoard at once) and nothing else; the queue of runs with new event-file artifacts.
    viewer = databases.ensure_role(server, databases.TENSORBOARD_ROLE,
                                   settings.secret("tensorboard_db_password"))
    log(f"database role {databases.TENSORBOARD_ROLE}: {viewer}")

    s3 = config.s3_root_client()
    log(f"bucket {config.bucket}: {bucket.ensure(s3, config.bucket, config.wait_s)}")
    user = s3_user.ensure(config.s3_endpoint, settings.secret("minio_root_user"),
                          settings.secret("minio_root_password"), settings.secret("s3_access_key"),
                          settings.secret("s3_secret_key"), config.bucket)
    log(f"MLflow's S3 key: {user}")

    # Migrations run here, once, before any server starts: never in several workers at once.
    log("migrating the tracking database (mlflow db upgrade)")
    subprocess.run(["mlflow", "db", "upgrade", config.db_uri(config.mlflow_db)], check=True)
    databases.grant_tensorboard_reads(server, config.mlflow_db)
    tensorboard_sync.ensure_queue(server, config.mlflow_db, config.db_role)
    log("migrating the auth database")
    subprocess.run([sys.executable, "-m", "mlflow.server.auth", "db", "upgrade",
                    "--url", config.db_uri(config.auth_db)], check=True)
    from . import auth_cache
    from .login import CREATE_TABLE  # Flask: only for the roles that need it

    databases.run_as(server, config.auth_db, config.db_role, CREATE_TABLE)
    # Every change to the auth database tells MLflow's workers to drop what they cached.
    databases.run_as(server, config.auth_db, config.db_role, auth_cache.TRIGGERS)

    from . import users  # imports the MLflow server: slow, so only where needed

    store = users.open_store(config.db_uri(config.auth_db))
    admin = settings.secret("admin_username")
    # Set in .env: under compose init sees the value; on Swarm only that it is set.
    enforce = (bool(os.environ.get("MLSTACK_ADMIN_PASSWORD", "").strip())
               or os.environ.get("MLSTACK_ADMIN_PASSWORD_SET") == "1")
    state = users.ensure_admin(store, admin, settings.secret("admin_password"), enforce)
    log(f"admin user {admin}: {state}")
    # The jobs API's account: an admin, because it mints and deletes job identities and
    # creates each job's run. Only trainer-api holds its password; it never runs user code.
    service = users.ensure_admin(store, users.TRAINER_ACCOUNT,
                                 settings.secret("trainer_mlflow_password"), enforce=True)
    log(f"service user {users.TRAINER_ACCOUNT}: {service}")
    # The local workers' account: no grants at all; the jobs API knows it as a worker.
    worker = users.ensure_plain(store, users.WORKER_ACCOUNT,
                                settings.secret("worker_mlflow_password"))
    log(f"worker user {users.WORKER_ACCOUNT}: {worker}")
    log("init complete")


def run_health() -> int:
    try:
        with urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise ValueError("--password-stdin: no password on standard input")
    return password


def run_users(config: PlatformConfig, args: argparse.Namespace) -> None:
    from . import users

    store = users.open_store(config.db_uri(config.auth_db))
    if args.action == "list":
        for name, is_admin in users.listing(store):
            print(f"{name}\t{'admin' if is_admin else 'user'}")
    elif args.action == "create":
        password = users.create(store, args.username, read_password(args.password_stdin), args.admin)
        print(f"created user {args.username}" + (" (admin)" if args.admin else ""))
        if not args.password_stdin:
            print(f"password: {password}")
    elif args.action == "set-password":
        password = users.set_password(store, args.username, read_password(args.password_stdin))
        print(f"password changed for {args.username}")
        if not args.password_stdin:
            print(f"password: {password}")
    elif args.action == "delete":
        users.delete(store, args.username, settings.secret("admin_username"))
        print(f"deleted user {args.username}")
    elif args.action == "unblock":
        from .login import unblock

        lifted = unblock(store.engine, args.username)
        print(f"failed logins of {args.username} forgotten ({lifted} address(es))")


def run_ops(config: PlatformConfig, args: argparse.Namespace) -> int:
    from . import ops

    if args.action == "bucket-export":
        ops.bucket_export(config)
    elif args.action == "bucket-import":
        ops.bucket_import(config, args.replace)
    elif args.action == "bucket-usage":
        ops.bucket_usage(config)
    elif args.action == "admin-password-check":
        generated = ops.admin_password_is_generated(config)
        print("generated" if generated else "changed")
    elif args.action == "gc":
        ops.gc(config, args.older_than_days * 86400, args.dry_run)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlstack-platform", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = p.add_subparsers(dest="role", required=True)
    for role in ("secrets", "init", "serve", "health", "credentials", "janitor",
                 "janitor-check"):
        roles.add_parser(role)
    o = roles.add_parser("ops").add_subparsers(dest="action", required=True)
    for action in ("bucket-export", "bucket-usage", "admin-password-check"):
        o.add_parser(action)
    o.add_parser("bucket-import").add_argument(
        "--replace", action="store_true", help="remove every object first")
    g = o.add_parser("gc")
    g.add_argument("--older-than-days", type=float, required=True)
    g.add_argument("--dry-run", action="store_true")
    u = roles.add_parser("users").add_subparsers(dest="action", required=True)
    u.add_parser("list")
    for action in ("create", "set-password", "delete", "unblock"):
        a = u.add_parser(action)
        a.add_argument("username")
        if action in ("create", "set-password"):
            a.add_argument("--password-stdin", action="store_true",
                           help="read the password from standard input instead of generating one")
        if action == "create":
            a.add_argument("--admin", action="store_true", help="make the user an MLflow admin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.role == "health":
            return run_health()
        if args.role == "credentials":
            print(f"MLFLOW_TRACKING_USERNAME={settings.secret('admin_username')}")
            print(f"MLFLOW_TRACKING_PASSWORD={settings.secret('admin_password')}")
            return 0
        config = PlatformConfig.from_env()
        if args.role == "secrets":
            run_secrets(config)
        elif args.role == "init":
            run_init(config)
        elif args.role == "serve":
            from .server import exec_server
            exec_server(config)
        elif args.role == "users":
            run_users(config, args)
        elif args.role == "janitor":
            from . import janitor
            janitor.run_service(config)
        elif args.role == "janitor-check":
            from . import janitor
            return 0 if janitor.healthy() else 1
        elif args.role == "ops":
            return run_ops(config, args)
        return 0
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DependencyUnavailable, s3_user.S3UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # bad operator input (users ...)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[:3])} failed with exit code {exc.returncode}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
