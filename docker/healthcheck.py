"""Container health check: exit 0 when the URL answers 200 (no curl in the slim image)."""
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
    print(exc, file=sys.stderr)
    sys.exit(1)
