"""``python -m agent_host.probe [livez|readyz]``: exit 0 when the host's health endpoint
answers 200. The container HEALTHCHECK uses it, so the image needs no curl or wget."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "readyz"
    port = os.environ.get("JETAGENTS_HEALTH_PORT") or "8080"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
