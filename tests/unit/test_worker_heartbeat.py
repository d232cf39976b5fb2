"""The trainer's healthcheck: healthy only while the worker beats, and cheap to run.

Docker runs `mlstack-trainer check` every 10 s in every trainer container: it must not import
the worker's libraries (requests, psycopg2), which made each check cost 0.14 s of CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlstack_trainer.heartbeat import beat, check


def test_a_fresh_heartbeat_is_healthy_a_stale_or_missing_one_is_not(tmp_path, capsys):
    heartbeat = tmp_path / "heartbeat"
    assert check(heartbeat, max_age_s=60) == 1
    assert "no heartbeat yet" in capsys.readouterr().err

    beat(heartbeat)
    assert check(heartbeat, max_age_s=60) == 0

    heartbeat.write_text(str(time.time() - 120))
    assert check(heartbeat, max_age_s=60) == 1
    assert "last heartbeat 120s ago" in capsys.readouterr().err

    heartbeat.write_text("garbage")
    assert check(heartbeat, max_age_s=60) == 1


def test_the_check_command_imports_none_of_the_workers_libraries():
    probe = ("import sys\n"
             "from mlstack_trainer.__main__ import main\n"
             "main(['check'])\n"
             "print(sorted(m for m in ('requests', 'psycopg2', 'mlflow', 'urllib3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=60)
    assert out.stdout.strip() == "[]", (out.stdout, out.stderr)
