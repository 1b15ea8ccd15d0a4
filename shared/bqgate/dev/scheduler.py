"""The dev stack's Cloud Scheduler: POST the sweeper function every few seconds.

Run as ``python -m bqgate.dev.scheduler --url URL --every SECONDS`` (the dev stack does).
In the cloud, a Cloud Scheduler job calls the same function every minute (scheduler.tf).
Each answer is logged on one line; an unreachable sweeper is logged and retried.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request


def tick(url: str, timeout_s: float) -> str:
    """One scheduled call; returns a log line."""
    req = urllib.request.Request(
        url,
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "Google-Cloud-Scheduler"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return f"{resp.status} {resp.read().decode('utf-8', 'replace')[:500]}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode('utf-8', 'replace')[:500]}"
    except OSError as exc:
        return f"unreachable: {exc}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bqgate's local Cloud Scheduler")
    parser.add_argument("--url", required=True, help="the sweeper function's URL")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between calls")
    args = parser.parse_args(argv)
    while True:
        started = time.monotonic()
        line = tick(args.url, timeout_s=max(args.every * 4, 30.0))
        print(json.dumps({"at": round(time.time(), 3), "answer": line}), flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
