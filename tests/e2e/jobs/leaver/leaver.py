"""A job that tries to outlive its end: a daemon in a session of its own that kills every
process it may signal (its killers, if they ran as the job's uid) and keeps watching, plus
files planted in the container's shared temporary folders for the next job to trip over."""

from __future__ import annotations

import os
import signal
import time


def main(params, tensorboard_dir):
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        path = os.path.join(folder, "planted-by-leaver")
        with open(path, "w") as f:
            f.write("left behind for the next job\n")
        os.chmod(path, 0o666)
    job = os.getpid()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # the daemon: no parent, no process group of the job's
            while os.path.exists(f"/proc/{job}"):  # the job ends as if nothing were left
                time.sleep(0.01)
            deadline = time.monotonic() + float(params.get("linger_seconds", 90))
            while time.monotonic() < deadline:
                try:
                    os.kill(-1, signal.SIGKILL)  # everything of this uid but itself
                except OSError:
                    pass
                time.sleep(0.005)
            os._exit(0)
        os._exit(0)
    os.wait()
    print("leaver: daemon started", flush=True)
