#!/usr/bin/env python
"""Container healthcheck: TensorBoard answers its data API under the path prefix."""
import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:6006/tensorboard/data/environment", timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
