"""``bqgate bq ARGS...``: run Google's ``bq`` CLI against the gateway with a fresh token.

The token never appears on a command line (where ``ps`` and bq's own crash reports would
show it): it goes into a private ``.bigqueryrc`` (mode 0600, in a temporary folder removed
afterwards) with ``api`` (the gateway's URL, whose ``/$discovery/rest`` bq reads),
``project_id`` and ``use_legacy_sql = false`` for ``query`` and ``mk``, since the gateway
runs GoogleSQL only. Flags given on the command line override the file::

    bqgate bq ls
    bqgate bq query 'SELECT name, COUNT(*) AS n FROM `demo-project.analytics.events` GROUP BY 1'
    bqgate bq head -n 5 sales.customers

Locally (a dev stack is running) the token is minted by the dev issuer for ``--principal``
(default the demo agent); with ``--gateway URL`` outside dev it is a Google ID token for
``--audience`` from Application Default Credentials. ``bq`` itself comes from the Google
Cloud SDK (``bq.py`` under ``platform/bq``); ``BQGATE_BQ`` names another ``bq.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bqgate.dev import issuer

SDK_BQ = ("/usr/lib/google-cloud-sdk/platform/bq/bq.py",)
DEFAULT_PRINCIPAL = "agent@demo-project.iam.gserviceaccount.com"


def register(subparsers: Any) -> None:
    """Add the ``bq`` subcommand to the ``bqgate`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bq",
        help="run the bq CLI against the gateway with a fresh token",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gateway", default=None, help="gateway URL (default: the dev stack's)")
    parser.add_argument("--project", default="demo-project", help="bq's --project_id")
    parser.add_argument("--principal", default=None, help="dev only: whom the token is for")
    parser.add_argument("--audience", default=issuer.DEFAULT_AUDIENCE, help="the token's aud")
    parser.add_argument("--dev-dir", type=Path, default=None, help="dev state folder")
    parser.add_argument("bq_args", nargs=argparse.REMAINDER, help="arguments for bq")
    parser.set_defaults(func=run)


def find_bq() -> tuple[str, str]:
    """(python, bq.py) of the Google Cloud SDK's bq, or of ``BQGATE_BQ``."""
    candidates = [os.environ.get("BQGATE_BQ", "")]
    wrapper = shutil.which("bq")
    if wrapper:
        sdk = Path(os.path.realpath(wrapper)).parent.parent  # <sdk>/bin/bq
        candidates.append(str(sdk / "platform" / "bq" / "bq.py"))
    candidates += list(SDK_BQ)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            sdk_root = Path(candidate).resolve().parents[2]
            bundled = sdk_root / "platform" / "bundledpythonunix" / "bin" / "python3"
            python = os.environ.get("CLOUDSDK_BQ_PYTHON") or (
                str(bundled) if bundled.exists() else sys.executable
            )
            return python, candidate
    raise FileNotFoundError(
        "the bq CLI was not found: it comes with the Google Cloud SDK (Debian package "
        "google-cloud-cli, platform/bq/bq.py); set BQGATE_BQ to its bq.py"
    )


def _token(args: argparse.Namespace) -> tuple[str, str]:
    """(gateway URL, token)."""
    if args.gateway and not args.principal and not args.dev_dir:
        from bqgate.identity import is_loopback

        if not is_loopback(args.gateway):
            from bqgate.adapters.executor_client import google_id_token

            token = google_id_token(args.audience)()
            if not token:
                raise ValueError("no ID token from Application Default Credentials")
            return args.gateway, token
    dev_dir = issuer.find_dev_dir(args.dev_dir)
    endpoints = issuer.read_endpoints(dev_dir)
    url = args.gateway or endpoints.get("gateway")
    issuer_url = endpoints.get("oidc_issuer")
    if not url or not issuer_url:
        raise issuer.DevStackNotFound(
            f"{dev_dir / issuer.ENDPOINTS_FILE} lacks gateway/oidc_issuer"
        )
    token = issuer.mint_token(
        args.principal or DEFAULT_PRINCIPAL,
        [],
        900,
        args.audience,
        issuer_url=issuer_url,
        key_dir=dev_dir / issuer.OIDC_SUBDIR,
    )
    return url, token


def bigqueryrc(url: str, token: str, project: str) -> str:
    """The private bigqueryrc ``bqgate bq`` runs bq with.

    >>> print(bigqueryrc("http://127.0.0.1:8180/", "T", "p"))
    api = http://127.0.0.1:8180
    oauth_access_token = T
    project_id = p
    [query]
    use_legacy_sql = false
    [mk]
    use_legacy_sql = false
    <BLANKLINE>
    """
    return (
        f"api = {url.rstrip('/')}\n"
        f"oauth_access_token = {token}\n"
        f"project_id = {project}\n"
        "[query]\nuse_legacy_sql = false\n"
        "[mk]\nuse_legacy_sql = false\n"
    )


def run(args: argparse.Namespace) -> int:
    try:
        python, bq_py = find_bq()
        url, token = _token(args)
    except (FileNotFoundError, issuer.DevStackNotFound, ValueError) as exc:
        print(f"bqgate: {exc}", file=sys.stderr)
        return 2
    bq_args = list(args.bq_args)
    if bq_args[:1] == ["--"]:
        bq_args = bq_args[1:]
    with tempfile.TemporaryDirectory(prefix="bqgate-bq-") as tmp:
        rc = Path(tmp) / "bigqueryrc"
        fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(bigqueryrc(url, token, args.project))
        env = {
            **os.environ,
            "BIGQUERYRC": str(rc),
            # bq must not pick up (or write) the user's gcloud credentials and settings.
            "CLOUDSDK_CONFIG": str(Path(tmp) / "gcloud"),
        }
        return subprocess.call([python, bq_py, *bq_args], env=env)
