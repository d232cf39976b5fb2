"""`mlstack-tensorboard serve` (the container's program) and `health` (its healthcheck)."""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.request

from .selection import Selection
from .settings import SettingError, Settings, load


# --load_fast=true, measured with tensorboard 2.21 (no TensorFlow) over 50 experiments x 3 runs
# x 4 tags x 500 steps: per TensorBoard over one experiment, 49 MiB own memory (USS of python +
# Rust data server) against 63 MiB for load_fast=false, both up in ~0.5 s; over all 50
# experiments, 102 MiB against 336 MiB, and the first scalars answered after 0.6 s against
# 6.7 s. The Rust data server is one more process per TensorBoard but more fit in memory, and
# big selections open faster. Its binary ships only in the x86_64 (and macOS) wheels of
# tensorboard-data-server; where it is missing (an arm64 host) `true` would make every
# TensorBoard exit at once, so the router falls back to `false` there, and says so.
def load_fast() -> str:
    try:
        from tensorboard_data_server import server_binary
    except ImportError:
        server_binary = None
    if server_binary is not None and server_binary():
        return "true"
    logging.getLogger("mlstack_tensorboard").warning(
        "no TensorBoard data server binary for this platform: TensorBoards load event files in "
        "python (--load_fast=false), slower and with more memory each")
    return "false"


def tensorboard_command(settings: Settings):
    fast = load_fast()

    def command(selection: Selection, port: int, view_dir) -> list[str]:
        return [
            settings.tensorboard_binary,
            "--logdir", str(view_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            # TensorBoard's own URLs carry the prefix, so they pass through the router unchanged.
            "--path_prefix", f"/tensorboard/{selection.name}",
            "--reload_interval", str(settings.reload_seconds),
            # Runs still training write new event files; pick them up too.
            "--reload_multifile", "true",
            "--load_fast", fast,
            "--window_title", f"mlstack TensorBoard: {selection.title}",
        ]
    return command


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from .app import Router, create_app
    from .catalog import Catalog, connector
    from .pool import Pool

    catalog = Catalog(connector(settings.db_host, settings.db_port, settings.db_name,
                                settings.db_user, settings.db_password_file))
    settings.views_root.mkdir(parents=True, exist_ok=True)
    views_root = settings.views_root
    pool = Pool(tensorboard_command(settings), lambda s: views_root / s.name,
                max_resident=settings.max_resident, idle_s=settings.idle_minutes * 60,
                start_timeout_s=settings.start_timeout_s)
    router = Router(catalog, pool, settings.tb_root, settings.views_root)
    logging.getLogger("mlstack_tensorboard").info(
        "serving TensorBoards of %s on %s:%d (at most %d resident, stopped after %g min idle)",
        settings.tb_root, host, port, settings.max_resident, settings.idle_minutes)
    # Access logs off: TensorBoard polls every few seconds per open tab, and nginx logs every
    # request already. uvicorn turns SIGTERM into a shutdown that stops every TensorBoard.
    uvicorn.run(create_app(router, check_every_s=min(30.0, settings.idle_minutes * 15)),
                host=host, port=port, access_log=False, log_config=None)


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlstack-tensorboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the router (the container's program)")
    p_serve.add_argument("--host", default="0.0.0.0")
    p_serve.add_argument("--port", type=int, default=6006)
    p_health = sub.add_parser("health", help="exit 0 if the router answers /healthz")
    p_health.add_argument("--url", default="http://127.0.0.1:6006/healthz")
    args = parser.parse_args(argv)

    if args.command == "health":
        return health(args.url)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: one line per TensorBoard poll would bury the starts
    # and stops, which are what the log is for.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = load()
    except SettingError as exc:
        print(f"mlstack-tensorboard: {exc}", file=sys.stderr)
        return 2
    serve(settings, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
