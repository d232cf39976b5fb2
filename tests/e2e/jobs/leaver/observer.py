"""The next job on the same worker: what did the previous one leave?"""

from __future__ import annotations

import json
import os


def main(params, tensorboard_dir):
    others = sorted({os.stat(f"/proc/{pid}").st_uid for pid in os.listdir("/proc")
                     if pid.isdigit() and os.path.exists(f"/proc/{pid}")} - {os.getuid(), 0})
    planted = [p for p in ("/tmp/planted-by-leaver", "/var/tmp/planted-by-leaver",
                           "/dev/shm/planted-by-leaver") if os.path.exists(p)]
    print("OBSERVED " + json.dumps({"other_uids": others, "planted": planted}), flush=True)
