"""The TensorBoard router (docker/tensorboard): selections, views, catalog, pool, proxy.

The catalog runs against a real PostgreSQL through a role with column grants only (as in
production); the pool and proxy against a cheap stand-in HTTP server for TensorBoard (the test
venv's TensorBoard imports TensorFlow and starts slowly); one test runs the whole router with
real stock TensorBoard over real event files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg2
import pytest
from mlstack_tensorboard import views
from mlstack_tensorboard.app import Router, create_app
from mlstack_tensorboard.catalog import Catalog, CatalogUnavailable, Lookup, connector
from mlstack_tensorboard.pool import Pool, StartFailed
from mlstack_tensorboard.selection import Selection, parse
from mlstack_tensorboard.settings import SettingError, load

from mlstack_platform.databases import Server, wait_until_ready


def run_id(n: int) -> str:
    return f"{n:032x}"


# ---------------------------------------------------------------- settings and selections


def test_settings_defaults_and_clear_errors():
    s = load({})
    assert (s.max_resident, s.idle_minutes, s.reload_seconds) == (10, 10.0, 5)
    assert str(s.tb_root) == "/var/lib/mlstack/tb-logs"
    assert str(s.views_root) == "/tmp/mlstack-tb-views"
    assert (s.db_host, s.db_port, s.db_name, s.db_user) == ("postgres", 5432, "mlflow",
                                                            "mlstack_tensorboard")
    with pytest.raises(SettingError, match=r"TENSORBOARD_MAX_RESIDENT='abc': expected a whole number"):
        load({"TENSORBOARD_MAX_RESIDENT": "abc"})
    with pytest.raises(SettingError, match="TENSORBOARD_MAX_RESIDENT='0'"):
        load({"TENSORBOARD_MAX_RESIDENT": "0"})
    with pytest.raises(SettingError, match="TENSORBOARD_IDLE_MINUTES='soon': expected a number"):
        load({"TENSORBOARD_IDLE_MINUTES": "soon"})
    with pytest.raises(SettingError, match="TENSORBOARD_RELOAD_SECONDS"):
        load({"TENSORBOARD_RELOAD_SECONDS": "-1"})


def test_bad_setting_stops_the_service_with_its_name():
    env = {**os.environ, "TENSORBOARD_MAX_RESIDENT": "abc"}
    r = subprocess.run([sys.executable, "-m", "mlstack_tensorboard", "serve"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "TENSORBOARD_MAX_RESIDENT='abc'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("segment, name, canonical", [
    ("3", "3", True),
    ("0", "0", True),
    ("all", "all", True),
    ("1,3", "1,3", True),
    ("3,1", "1,3", False),
    ("1,3,3", "1,3", False),
    ("3,3", "3", False),
    ("007", "7", False),
    ("10,9,2", "2,9,10", False),
])
def test_selection_canonical_spelling(segment, name, canonical):
    selection, is_canonical = parse(segment)
    assert (selection.name, is_canonical) == (name, canonical)


@pytest.mark.parametrize("segment", ["", "x", "1,", ",1", "1,,2", "-1", "1.5", "ALL", "all,1",
                                     ",".join(map(str, range(21))), "1" * 19, "1 ,2"])
def test_selection_rejects(segment):
    assert parse(segment) is None


def test_selection_titles():
    assert Selection((4,)).title == "experiment 4"
    assert Selection((1, 2)).title == "experiments 1, 2"
    assert Selection(None).title == "all experiments"
    assert not Selection((4,)).nested and Selection((1, 2)).nested and Selection(None).nested


# ---------------------------------------------------------------- views


def make_runs(tb_root: Path, experiment_id: int, *names: str) -> None:
    for name in names:
        (tb_root / str(experiment_id) / name).mkdir(parents=True)


def links_of(view: Path) -> dict[str, str]:
    out = {}
    for path in sorted(view.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(view))] = os.readlink(path)
    return out


def test_view_links_active_runs_and_ignores_the_rest(tmp_path):
    tb, view = tmp_path / "tb", tmp_path / "views" / "1"
    make_runs(tb, 1, f"train-{run_id(1)}", f"eval-{run_id(2)}", f"gone-{run_id(3)}",
              "not-a-run", f"short-{'a' * 31}", f"UPPER-{'A' * 32}", f".hidden-{run_id(1)}")
    (tb / "1" / ".mlstack-permissions-v1").write_text("x")
    (tb / "1" / f"file-{run_id(1)}").parent.mkdir(exist_ok=True)
    (tb / "1" / f"file-{run_id(4)}").write_text("a file, not a run folder")
    links = views.desired_links(tb, {1: frozenset({run_id(1), run_id(2), run_id(4)})}, nested=False)
    changes = views.sync(view, links)
    # A run with two folders (a run named '.hidden' logged twice, say) shows both.
    assert sorted(changes.added) == [f".hidden-{run_id(1)}", f"eval-{run_id(2)}", f"train-{run_id(1)}"]
    assert links_of(view) == {f".hidden-{run_id(1)}": str(tb / "1" / f".hidden-{run_id(1)}"),
                              f"eval-{run_id(2)}": str(tb / "1" / f"eval-{run_id(2)}"),
                              f"train-{run_id(1)}": str(tb / "1" / f"train-{run_id(1)}")}

    # Same again: nothing to do. A run deleted in MLflow: its link goes, and says so.
    assert views.sync(view, links) == views.Changes((), ())
    links = views.desired_links(tb, {1: frozenset({run_id(2)})}, nested=False)
    assert views.sync(view, links) == views.Changes((), (f".hidden-{run_id(1)}", f"train-{run_id(1)}"))
    # A new run folder appears; the deleted run is restored.
    make_runs(tb, 1, f"new-{run_id(5)}")
    links = views.desired_links(tb, {1: frozenset({run_id(1), run_id(2), run_id(5)})}, nested=False)
    assert sorted(views.sync(view, links).added) == [f".hidden-{run_id(1)}", f"new-{run_id(5)}",
                                                     f"train-{run_id(1)}"]


def test_view_never_escapes_the_root(tmp_path):
    tb, view = tmp_path / "tb", tmp_path / "views" / "1"
    outside = tmp_path / "secret"
    outside.mkdir()
    (tb / "1").mkdir(parents=True)
    odd = [f"..-{run_id(1)}", f"a\nb -{run_id(2)}", f"é ü*?-{run_id(3)}", f"...-{run_id(4)}"]
    make_runs(tb, 1, *odd)
    # A symlink planted in the volume that looks like a run folder is not followed.
    (tb / "1" / f"evil-{run_id(9)}").symlink_to(outside, target_is_directory=True)
    ids = frozenset(run_id(n) for n in (1, 2, 3, 4, 9))
    views.sync(view, views.desired_links(tb, {1: ids}, nested=False))
    links = links_of(view)
    assert sorted(links) == sorted(odd)
    for name, target in links.items():
        assert (view / name).parent == view
        assert Path(target).parent == tb / "1"
        assert os.path.realpath(view / name).startswith(str(tb / "1") + os.sep)
    # And a hand-made mapping with path tricks is refused rather than written outside.
    changes = views.sync(view, {"../escaped": tb / "1" / odd[0], "a/b/c": tb / "1" / odd[0]})
    assert changes.added == ()
    assert not (view.parent / "escaped").exists()


def test_view_of_several_experiments_nests_by_experiment(tmp_path):
    tb, view = tmp_path / "tb", tmp_path / "views" / "1,2"
    make_runs(tb, 1, f"a-{run_id(1)}")
    make_runs(tb, 2, f"a-{run_id(2)}", f"b-{run_id(3)}")
    runs = {1: frozenset({run_id(1)}), 2: frozenset({run_id(2), run_id(3)}), 3: frozenset()}
    views.sync(view, views.desired_links(tb, runs, nested=True))
    assert links_of(view) == {f"1/a-{run_id(1)}": str(tb / "1" / f"a-{run_id(1)}"),
                              f"2/a-{run_id(2)}": str(tb / "2" / f"a-{run_id(2)}"),
                              f"2/b-{run_id(3)}": str(tb / "2" / f"b-{run_id(3)}")}
    # The only run of experiment 1 deleted: its link and its now empty folder go.
    runs[1] = frozenset()
    assert views.sync(view, views.desired_links(tb, runs, nested=True)).removed == (f"1/a-{run_id(1)}",)
    assert not (view / "1").exists()


def test_sync_deletes_only_symlinks(tmp_path):
    view = tmp_path / "view"
    (view / "keep").mkdir(parents=True)
    (view / "keep" / "data").write_text("not ours")
    (view / "file").write_text("not ours")
    views.sync(view, {})
    assert (view / "keep" / "data").exists() and (view / "file").exists()


# ---------------------------------------------------------------- catalog (real PostgreSQL)


def _local_postgres(tmp_dir: Path):
    """A throwaway PostgreSQL cluster from the local binaries, for machines without Docker."""
    user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
    pw = "local-superuser-for-tests"
    data = tmp_dir / "data"
    (tmp_dir / "pw").write_text(pw)
    if user:
        shutil.chown(tmp_dir, user)
        shutil.chown(tmp_dir / "pw", user)
    as_user = ["runuser", "-u", user, "--"] if user else []
    subprocess.run(as_user + ["initdb", "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                              f"--pwfile={tmp_dir / 'pw'}"], check=True, capture_output=True)
    port = free_port()
    subprocess.run(as_user + ["pg_ctl", "-D", str(data), "-w", "-l", str(tmp_dir / "log"), "-o",
                              f"-p {port} -k {tmp_dir} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    server = Server("127.0.0.1", port, "postgres", pw)
    wait_until_ready(server, timeout_s=30)
    return server, lambda: subprocess.run(as_user + ["pg_ctl", "-D", str(data), "-m", "immediate",
                                                     "stop"], capture_output=True)


@pytest.fixture(scope="module")
def pg_server(request):
    """conftest's `postgres` (Docker); where Docker cannot run, a local cluster instead."""
    try:
        yield request.getfixturevalue("postgres")
        return
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not shutil.which("initdb"):
            raise
    tmp_dir = Path(tempfile.mkdtemp(prefix="mlstack-tb-pg-"))
    server, stop = _local_postgres(tmp_dir)
    try:
        yield server
    finally:
        stop()
        shutil.rmtree(tmp_dir, ignore_errors=True)


class MlflowDb:
    """An MLflow-like database and the router's role, which may read four columns only."""

    def __init__(self, server: Server, password_file: Path):
        self.server = server
        self.name = f"mlflow_tb_{uuid.uuid4().hex[:8]}"
        self.role = f"tb_{uuid.uuid4().hex[:8]}"
        self.password_file = password_file
        password_file.write_text("role-password\n")
        conn = server.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.name}")
            cur.execute(f"CREATE ROLE {self.role} LOGIN PASSWORD 'role-password'")
        conn.close()
        with self.admin() as cur:
            cur.execute("""
                CREATE TABLE experiments (experiment_id SERIAL PRIMARY KEY, name VARCHAR(256),
                    lifecycle_stage VARCHAR(32));
                CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY, name VARCHAR(250),
                    experiment_id INTEGER REFERENCES experiments, lifecycle_stage VARCHAR(20));
            """)
            cur.execute(f"GRANT SELECT (run_uuid, experiment_id, lifecycle_stage) ON runs TO {self.role};"
                        f"GRANT SELECT (experiment_id, lifecycle_stage) ON experiments TO {self.role}")

    def admin(self):
        db = self

        class _Cursor:
            def __enter__(self):
                self.conn = db.server.connect(db.name)
                self.conn.autocommit = True
                self.cur = self.conn.cursor()
                return self.cur

            def __exit__(self, *exc):
                self.cur.close()
                self.conn.close()
        return _Cursor()

    def experiment(self, experiment_id: int, stage: str = "active") -> None:
        with self.admin() as cur:
            cur.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES "
                        "(%s, %s, %s) ON CONFLICT (experiment_id) DO UPDATE SET lifecycle_stage = %s",
                        (experiment_id, f"exp {experiment_id}", stage, stage))

    def run(self, experiment_id: int, rid: str, stage: str = "active") -> None:
        with self.admin() as cur:
            cur.execute("INSERT INTO runs (run_uuid, name, experiment_id, lifecycle_stage) VALUES "
                        "(%s, 'secret name', %s, %s) ON CONFLICT (run_uuid) DO UPDATE "
                        "SET lifecycle_stage = %s", (rid, experiment_id, stage, stage))

    def catalog(self) -> Catalog:
        return Catalog(connector(self.server.host, self.server.port, self.name, self.role,
                                 self.password_file))

    def env(self) -> dict[str, str]:
        return {"MLSTACK_TB_DB_HOST": self.server.host, "MLSTACK_TB_DB_PORT": str(self.server.port),
                "MLSTACK_TB_DB_NAME": self.name, "MLSTACK_TB_DB_USER": self.role,
                "MLSTACK_TB_DB_PASSWORD_FILE": str(self.password_file)}


@pytest.fixture
def mlflow_db(pg_server, tmp_path):
    return MlflowDb(pg_server, tmp_path / "tensorboard_db_password")


def test_catalog_reads_active_runs_through_column_grants(mlflow_db):
    db = mlflow_db
    db.experiment(1)
    db.experiment(2)
    db.experiment(3, "deleted")
    db.run(1, run_id(1))
    db.run(1, run_id(2), "deleted")
    db.run(2, run_id(3))
    db.run(3, run_id(4))
    # The role really is limited to those columns.
    conn = psycopg2.connect(host=db.server.host, port=db.server.port, dbname=db.name, user=db.role,
                            password="role-password")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
        cur.execute("SELECT * FROM runs")
    conn.close()

    catalog = db.catalog()
    assert catalog.lookup([1]) == Lookup((), {1: frozenset({run_id(1)})})
    assert catalog.lookup([2, 1]) == Lookup((), {1: frozenset({run_id(1)}), 2: frozenset({run_id(3)})})
    assert catalog.lookup([1, 3, 99]).missing == (3, 99)
    assert catalog.lookup(None) == Lookup((), {1: frozenset({run_id(1)}), 2: frozenset({run_id(3)})})
    db.experiment(4)
    assert catalog.lookup([4]) == Lookup((), {4: frozenset()})
    catalog.close()


def test_catalog_reconnects_after_the_connection_drops(mlflow_db):
    db = mlflow_db
    db.experiment(1)
    catalog = db.catalog()
    assert catalog.lookup([1]).missing == ()
    with db.admin() as cur:  # what a database restart does to the router's connection
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (db.role,))
    with pytest.raises(CatalogUnavailable):
        catalog.lookup([1])
    assert catalog.lookup([1]).missing == ()
    catalog.close()


def test_catalog_unavailable_when_the_database_cannot_be_reached(tmp_path):
    (tmp_path / "pw").write_text("x")
    catalog = Catalog(connector("127.0.0.1", free_port(), "mlflow", "nobody", tmp_path / "pw"))
    with pytest.raises(CatalogUnavailable):
        catalog.lookup([1])
    missing_file = Catalog(connector("127.0.0.1", free_port(), "mlflow", "x", tmp_path / "absent"))
    with pytest.raises(CatalogUnavailable, match="password file"):
        missing_file.lookup([1])


# ---------------------------------------------------------------- pool and proxy (stand-in)

STANDIN = r'''
import http.server, json, sys, time
port, prefix, view, delay = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
with open(sys.argv[5], "a") as f:
    f.write(prefix + "\n")  # one line per start
time.sleep(delay)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"method": self.command, "path": self.path, "view": view,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body.decode()}).encode()
        self.send_response(200 if self.path.startswith(prefix + "/") else 404)
        self.send_header("content-type", "application/json")
        self.send_header("set-cookie", "a=1")
        self.send_header("set-cookie", "b=2")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standin(tmp_path):
    """A command for the pool that starts the stand-in; `starts` counts its starts."""
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    starts = tmp_path / "starts"
    starts.write_text("")

    class Standin:
        delay = 0.0
        argv = None

        def command(self, selection, port, view_dir):
            return [sys.executable, str(script), str(port), f"/tensorboard/{selection.name}",
                    str(view_dir), str(self.delay), str(starts)]

        def starts(self) -> list[str]:
            return starts.read_text().split()
    return Standin()


def make_pool(standin, tmp_path, **kw) -> Pool:
    args = {"max_resident": 3, "idle_s": 600, "start_timeout_s": 10} | kw
    return Pool(standin.command, lambda s: tmp_path / "views" / s.name, **args)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pool_starts_once_for_concurrent_requests(standin, tmp_path):
    standin.delay = 0.5

    async def go():
        pool = make_pool(standin, tmp_path)
        ports = await asyncio.gather(*[pool.ensure(Selection((1,))) for _ in range(20)])
        assert len(set(ports)) == 1
        await pool.close()
    asyncio.run(go())
    assert standin.starts() == ["/tensorboard/1"]


def test_one_users_burst_of_selections_neither_crashes_nor_evicts_views_in_use(standin,
                                                                              tmp_path):
    """Many different selections at once (each a new TensorBoard): starts are one at a time,
    the cap holds, TensorBoards used in the last `busy_s` are not thrown out (the surplus is
    refused with a 503 message instead), and nothing raises anything else."""
    async def go():
        pool = make_pool(standin, tmp_path, max_resident=3, busy_s=60)
        await pool.ensure(Selection((1,)))  # someone else's, in use
        in_use = pool._procs["1"].proc.pid
        outcomes = await asyncio.gather(
            *[pool.ensure(Selection((1, n))) for n in range(2, 14)], return_exceptions=True)
        assert all(isinstance(o, int) or isinstance(o, StartFailed) for o in outcomes), outcomes
        assert sum(isinstance(o, StartFailed) for o in outcomes) == 10
        assert "busy" in str(next(o for o in outcomes if isinstance(o, StartFailed)))
        assert len(pool.resident()) == 3 and "1" in pool.resident()
        assert pool._procs["1"].proc.pid == in_use
        await pool.close()
    asyncio.run(go())


def test_pool_evicts_least_recently_used_and_stops_idle(standin, tmp_path, caplog):
    caplog.set_level("INFO", logger="mlstack_tensorboard")

    async def go():
        pool = make_pool(standin, tmp_path, max_resident=2, idle_s=0.5, busy_s=0)
        await pool.ensure(Selection((1,)))
        await pool.ensure(Selection((2,)))
        await pool.ensure(Selection((1,)))  # 2 is now the least recently used
        pids = {name: p.proc.pid for name, p in pool._procs.items()}
        await pool.ensure(Selection((3,)))
        assert pool.resident() == ["1", "3"]
        assert not alive(pids["2"])
        await asyncio.sleep(0.7)
        await pool.check()
        assert pool.resident() == []
        assert not alive(pids["1"])
        await pool.close()
    asyncio.run(go())
    assert "stopped TensorBoard for experiment 2" in caplog.text and "evicted" in caplog.text
    assert "idle" in caplog.text


def test_pool_restarts_a_process_that_died(standin, tmp_path, caplog):
    caplog.set_level("INFO", logger="mlstack_tensorboard")

    async def go():
        pool = make_pool(standin, tmp_path)
        port = await pool.ensure(Selection((1,)))
        proc = pool._procs["1"].proc
        proc.kill()
        await asyncio.sleep(0.2)
        assert await pool.ensure(Selection((1,))) != 0
        assert pool._procs["1"].proc is not proc and proc.returncode is not None
        assert port  # started twice
        await pool.close()
    asyncio.run(go())
    assert len(standin.starts()) == 2
    assert "died, exit code -9" in caplog.text


def test_pool_gives_up_on_a_process_that_never_answers(standin, tmp_path):
    standin.delay = 30

    async def go():
        pool = make_pool(standin, tmp_path, start_timeout_s=1)
        with pytest.raises(StartFailed, match="TensorBoard for experiment 1 did not start"):
            await pool.ensure(Selection((1,)))
        assert pool.resident() == []
        await pool.close()
    asyncio.run(go())


def test_pool_close_stops_every_process(standin, tmp_path):
    async def go():
        pool = make_pool(standin, tmp_path)
        await pool.ensure(Selection((1,)))
        await pool.ensure(Selection((1, 2)))
        procs = [p.proc for p in pool._procs.values()]
        await pool.close()
        assert all(p.returncode is not None for p in procs)
    asyncio.run(go())


class FakeCatalog:
    def __init__(self, runs: dict[int, set[str]]):
        self.runs = runs
        self.down = False
        self.calls = 0

    def lookup(self, ids):
        self.calls += 1
        if self.down:
            raise CatalogUnavailable("connection refused")
        wanted = sorted(self.runs) if ids is None else sorted(set(ids))
        missing = tuple(i for i in wanted if i not in self.runs)
        return Lookup(missing, {i: frozenset(self.runs[i]) for i in wanted if i in self.runs})


def test_proxy_routes_views_and_credentials(standin, tmp_path, monkeypatch):
    monkeypatch.setattr("mlstack_tensorboard.app.REFRESH_S", 0.0)
    tb = tmp_path / "tb"
    make_runs(tb, 1, f"a-{run_id(1)}", f"b-{run_id(2)}")
    make_runs(tb, 2, f"c-{run_id(3)}")
    catalog = FakeCatalog({1: {run_id(1), run_id(2)}, 2: {run_id(3)}})
    pool = make_pool(standin, tmp_path)
    router = Router(catalog, pool, tb, tmp_path / "views")
    app = create_app(router)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
            assert (await c.get("/healthz")).text == "ok"
            r = await c.get("/nothing")
            assert r.status_code == 404 and "text/plain" in r.headers["content-type"]
            assert (await c.get("/tensorboard/abc/")).status_code == 404
            assert (await c.get("/tensorboard/abc")).status_code == 404
            r = await c.get("/tensorboard/1")
            assert (r.status_code, r.headers["location"]) == (308, "/tensorboard/1/")
            r = await c.get("/tensorboard/2,1,2?x=1")
            assert (r.status_code, r.headers["location"]) == (308, "/tensorboard/1,2/?x=1")
            r = await c.get("/tensorboard/2,1/data/plugin/scalars/scalars?run=a%2Fb&tag=loss")
            assert r.status_code == 308
            assert r.headers["location"] == "/tensorboard/1,2/data/plugin/scalars/scalars?run=a%2Fb&tag=loss"

            r = await c.get("/tensorboard/1/data/runs?x=%2F1", headers={
                "Authorization": "Basic eDp5", "Cookie": "session=1", "Proxy-Authorization": "x",
                "X-Other": "kept"})
            assert r.status_code == 200
            seen = r.json()
            assert seen["path"] == "/tensorboard/1/data/runs?x=%2F1"
            assert "authorization" not in seen["headers"] and "cookie" not in seen["headers"]
            assert "proxy-authorization" not in seen["headers"]
            assert seen["headers"]["x-other"] == "kept"
            assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
            assert sorted(os.listdir(seen["view"])) == [f"a-{run_id(1)}", f"b-{run_id(2)}"]

            r = await c.post("/tensorboard/1/experiment/defaultExperimentId/data/plugin/timeseries/"
                             "timeSeries", data={"requests": '[{"plugin": "scalars"}]'})
            assert r.json()["method"] == "POST" and "requests=" in r.json()["body"]

            r = await c.get("/tensorboard/1,2/data/runs")
            view = r.json()["view"]
            assert sorted(str(p.relative_to(view)) for p in Path(view).rglob("*")) == [
                "1", f"1/a-{run_id(1)}", f"1/b-{run_id(2)}", "2", f"2/c-{run_id(3)}"]

            # A run deleted in MLflow: its link goes, and the TensorBoard restarts.
            pid = pool._procs["1"].proc.pid
            catalog.runs[1].discard(run_id(2))
            r = await c.get("/tensorboard/1/data/runs")
            assert os.listdir(r.json()["view"]) == [f"a-{run_id(1)}"]
            assert pool._procs["1"].proc.pid != pid and not alive(pid)
            # Restored: back, without a restart (TensorBoard picks it up on its next reload).
            catalog.runs[1].add(run_id(2))
            pid = pool._procs["1"].proc.pid
            r = await c.get("/tensorboard/1/data/runs")
            assert len(os.listdir(r.json()["view"])) == 2 and pool._procs["1"].proc.pid == pid

            # Experiment deleted: 404, and its TensorBoard stops.
            del catalog.runs[1]
            r = await c.get("/tensorboard/1/data/runs")
            assert (r.status_code, r.text) == (404, "experiment 1 does not exist or was deleted\n")
            assert "1" not in pool.resident() and not alive(pid)
            r = await c.get("/tensorboard/1,2/")
            assert r.status_code == 404 and "experiment 1 " in r.text

            # Database down: 503 with a plain message; back when it is.
            catalog.down = True
            r = await c.get("/tensorboard/2/data/runs")
            assert r.status_code == 503 and "database" in r.text
            catalog.down = False
            assert (await c.get("/tensorboard/2/data/runs")).status_code == 200
            all_view = (await c.get("/tensorboard/all/data/runs")).json()["view"]
            assert sorted(os.listdir(all_view)) == ["2"]
        await pool.close()
    asyncio.run(go())


def test_every_request_sees_the_runs_active_right_now(standin, tmp_path):
    catalog = FakeCatalog({1: set()})
    pool = make_pool(standin, tmp_path)
    app = create_app(Router(catalog, pool, tmp_path / "tb", tmp_path / "views"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
            for _ in range(5):
                assert (await c.get("/tensorboard/1/data/runs")).status_code == 200
        await pool.close()
    asyncio.run(go())
    assert catalog.calls == 5  # a run deleted in MLflow is gone from the very next answer


def test_tensorboard_command_line():
    from mlstack_tensorboard.__main__ import tensorboard_command
    settings = load({"TENSORBOARD_RELOAD_SECONDS": "7", "MLSTACK_TB_BINARY": "/opt/venv/bin/tensorboard"})
    argv = tensorboard_command(settings)(Selection((1, 2)), 4321, Path("/tmp/v/1,2"))
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "/opt/venv/bin/tensorboard"
    assert flags == {"--logdir": "/tmp/v/1,2", "--host": "127.0.0.1", "--port": "4321",
                     "--path_prefix": "/tensorboard/1,2", "--reload_interval": "7",
                     "--reload_multifile": "true", "--load_fast": "true",  # the .venv has the binary
                     "--window_title": "mlstack TensorBoard: experiments 1, 2"}


def test_health_command(tmp_path):
    from mlstack_tensorboard.__main__ import main
    assert main(["health", "--url", f"http://127.0.0.1:{free_port()}/healthz"]) == 1


# ---------------------------------------------------------------- the real thing


def write_scalars(run_dir: Path, values: list[float]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    w = EventFileWriter(str(run_dir))
    for step, v in enumerate(values):
        w.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="loss", simple_value=v)])))
    w.close()


def test_real_router_with_stock_tensorboard(mlflow_db, tmp_path):
    db = mlflow_db
    tb = tmp_path / "tb-logs"
    db.experiment(7)
    keep, drop = run_id(0xA), run_id(0xB)
    for rid, name in ((keep, "keep"), (drop, "drop")):
        db.run(7, rid)
        write_scalars(tb / "7" / f"{name}-{rid}", [1.0, 0.5, 0.25])
    db.run(7, run_id(0xC), "deleted")
    write_scalars(tb / "7" / f"deleted-{run_id(0xC)}", [9.0])

    port = free_port()
    env = {**os.environ, **db.env(), "MLSTACK_TB_ROOT": str(tb),
           "MLSTACK_TB_VIEWS": str(tmp_path / "views"), "TENSORBOARD_RELOAD_SECONDS": "1"}
    log = open(tmp_path / "router.log", "w")
    router = subprocess.Popen([sys.executable, "-m", "mlstack_tensorboard", "serve", "--host",
                               "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    c = httpx.Client(base_url=base, timeout=90, trust_env=False)

    def until(fetch, done, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while True:
            value = fetch()
            if done(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.3)

    try:
        until(lambda: _get(c, "/healthz"), lambda r: r is not None and r.status_code == 200, 30)
        runs = until(lambda: c.get("/tensorboard/7/data/runs").json(), lambda r: len(r) == 2)
        assert sorted(runs) == [f"drop-{drop}", f"keep-{keep}"]
        r = c.get("/tensorboard/7/data/plugin/scalars/scalars", params={"run": f"keep-{keep}",
                                                                        "tag": "loss"})
        assert r.status_code == 200
        assert [point[1:] for point in r.json()] == [[0, 1.0], [1, 0.5], [2, 0.25]]
        assert "experiment 7" in c.get("/tensorboard/7/data/environment").json()["window_title"]

        db.run(7, drop, "deleted")
        time.sleep(1.1)  # the view is refreshed at most once a second
        assert f"drop-{drop}" not in c.get("/tensorboard/7/data/runs").json()
        runs = until(lambda: c.get("/tensorboard/7/data/runs").json(), lambda r: len(r) == 1)
        assert runs == [f"keep-{keep}"]

        # SIGTERM to the router stops every TensorBoard (and its Rust data server) and reaps it.
        children = psutil.Process(router.pid).children(recursive=True)
        assert children
    finally:
        router.terminate()
        router.wait(30)
        log.close()
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    text = (tmp_path / "router.log").read_text()
    assert "stopped TensorBoard for experiment 7" in text and "run deleted: drop-" in text
    assert "router exiting" in text


def _get(client, path):
    try:
        return client.get(path)
    except httpx.HTTPError:
        return None
