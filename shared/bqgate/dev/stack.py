"""The local dev stack: every emulator and function of the gateway on loopback.

``bqgate dev`` (and ``nox -s dev``) runs :func:`main`; the test suite's session
fixture uses :class:`Stack` directly with free ports and a temporary state folder.
All state lives in one folder (default ``.bqgate-dev/``), which also holds
``endpoints.json``: every endpoint by name, so tools and tests find the stack
without parsing logs.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PROJECT = "demo-project"
AGENT = "agent@demo-project.iam.gserviceaccount.com"
LOCATION = "US"

#: Default loopback ports, by endpoint name (override with --port NAME=PORT).
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8180,
    "approvals": 8181,
    "executor": 8182,
    "slack_notify": 8183,
    "sweeper": 8184,
    "slack": 8190,
    "oidc_issuer": 8191,
    "bigquery": 9050,
    "bigquery_grpc": 9060,
    "firestore": 8086,
    "pubsub": 8085,
}

REPO_ROOT = Path(__file__).resolve().parents[3]
FIRESTORE_JAR = (
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
)
FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
PUBSUB_JARS = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar"
)

# The BigQuery emulator (see README: why local-bigquery) runs on Python 3.13 in its own venv.
BQ_EMULATOR_PACKAGES = ["local-bigquery==0.4.0"]
BQ_DUCKDB_PINS = [
    "duckdb==1.5.5",
    "duckdb-extension-icu==1.5.5",
    "duckdb-extension-ducklake==1.5.5",
    "duckdb-extension-spatial==1.5.5",
]
DUCKDB_VERSION = "v1.5.5"


class StackError(RuntimeError):
    """The stack could not start; the message says which part and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cache_dir() -> Path:
    base = os.environ.get("BQGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bqgate"
    )
    return Path(base)


def _find_python313() -> str:
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.13*/bin/python3.13"))
    candidates += [
        "/usr/bin/python3.13",
        "/usr/local/bin/python3.13",
        shutil.which("python3.13") or "",
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            probe = subprocess.run([c, "--version"], capture_output=True, text=True)
            if probe.returncode == 0:
                return c
    raise StackError(
        "the BigQuery emulator (local-bigquery) needs Python 3.13; none was found "
        "(looked under ~/.pyenv/versions, /usr/bin and on PATH)"
    )


def ensure_bigquery_emulator(log: IO[str] | None = None) -> tuple[Path, Path]:
    """Install local-bigquery in its own cached venv; return (executable, HOME for DuckDB)."""
    root = cache_dir() / "local-bigquery-0.4.0-duckdb-1.5.5"
    exe = root / "venv" / "bin" / "local-bigquery"
    home = root / "home"
    ext_dir = home / ".duckdb" / "extensions" / DUCKDB_VERSION / "linux_amd64"
    marker = root / "ready"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        out = log or sys.stderr
        print(
            f"bqgate: installing the BigQuery emulator (local-bigquery) once into {root} ...",
            file=out,
            flush=True,
        )
        venv = root / "venv"
        if not (venv / "bin" / "python").exists():
            subprocess.run([_find_python313(), "-m", "venv", str(venv)], check=True)
        pip = [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        # local-bigquery asks for duckdb>=2, but only 1.5.5 has extension wheels on PyPI
        # (DuckDB cannot download extensions here), so it is pinned back afterwards.
        for step in (BQ_EMULATOR_PACKAGES, BQ_DUCKDB_PINS):
            proc = subprocess.run(pip + step, capture_output=True, text=True)
            if proc.returncode != 0 and "dependency conflicts" not in proc.stderr:
                raise StackError(f"installing {' '.join(step)} failed:\n{proc.stderr[-2000:]}")
        ext_dir.mkdir(parents=True, exist_ok=True)
        site = glob.glob(str(venv / "lib" / "python3.13" / "site-packages"))[0]
        for f in glob.glob(
            f"{site}/duckdb_extension_*/extensions/{DUCKDB_VERSION}/*.duckdb_extension"
        ):
            shutil.copy(f, ext_dir)
        if not exe.exists():
            raise StackError(f"local-bigquery did not install into {venv}")
        marker.write_text("ok\n")
    return exe, home


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to kill this child if the stack process dies (belt and braces)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    """Starts and stops the whole local gateway."""

    state_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    repo_root: Path = REPO_ROOT
    policy_path: Path | None = None
    seed: bool = True
    #: Allowed jobs reach the executor by a direct call (True) or via the execute topic.
    fast_path: bool = True
    #: Seconds between two calls of the sweeper (Cloud Scheduler calls it every minute).
    sweep_interval_s: float = 5.0
    #: Put a FaultProxy (bqgate.dev.faults) in front of Pub/Sub for every publisher, so
    #: tests can make publishing fail (``stack.pubsub_faults.refuse()``).
    faults: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    pubsub_faults: Any = None

    # --- endpoints -----------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def endpoints(self) -> dict[str, str]:
        return {
            "gateway": self.url("gateway"),
            "approvals": self.url("approvals"),
            "executor": self.url("executor"),
            "slack_notify": self.url("slack_notify"),
            "sweeper": self.url("sweeper"),
            "slack": self.url("slack"),
            "oidc_issuer": self.url("oidc_issuer"),
            "bigquery": self.url("bigquery"),
            "firestore": f"127.0.0.1:{self.ports['firestore']}",
            "pubsub": f"127.0.0.1:{self.ports['pubsub']}",
            "project": PROJECT,
            "state_dir": str(self.state_dir.resolve()),
        }

    def function_env(self) -> dict[str, str]:
        """The environment every function (and the tests' in-process app) runs with."""
        policy = self.policy_path or (self.repo_root / "policies" / "default.yaml")
        return {
            "BQGATE_PROJECT": PROJECT,
            "BQGATE_WAREHOUSE_PROJECT": PROJECT,
            "BQGATE_POLICY": str(policy),
            "BQGATE_LOCATION": LOCATION,
            "BQGATE_BIGQUERY_ENDPOINT": self.url("bigquery"),
            "BQGATE_DEV_MODE": "1",
            "BQGATE_DEV_ISSUER": self.url("oidc_issuer"),
            "BQGATE_DEV_DIR": str(self.state_dir.resolve()),
            "BQGATE_SLACK_API_URL": self.url("slack") + "/api/",
            "BQGATE_SLACK_BOT_TOKEN": "xoxb-bqgate-dev",
            "BQGATE_SLACK_SIGNING_SECRET": self.signing_secret(),
            "BQGATE_APPROVALS_URL": self.url("approvals"),
            "BQGATE_EXECUTOR_URL": self.url("executor") if self.fast_path else "",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.ports['firestore']}",
            "PUBSUB_EMULATOR_HOST": (
                self.pubsub_faults.address
                if self.pubsub_faults is not None
                else f"127.0.0.1:{self.ports['pubsub']}"
            ),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            **self.extra_env,
        }

    def _secret(self, name: str, nbytes: int) -> str:
        path = self.state_dir / name
        if not path.exists():
            path.write_text(secrets.token_hex(nbytes) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def signing_secret(self) -> str:
        return self._secret("slack-signing-secret", 16)

    # --- processes -----------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed on stop
        full_env = {**os.environ, **(env or {})}
        popen = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd or self.repo_root),
            start_new_session=True,
            preexec_fn=_pdeathsig,
        )
        logf.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def _wait_http(self, proc: Proc, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise StackError(
                    f"{proc.name} exited with {proc.popen.returncode}; "
                    f"see {proc.log_path}:\n{_tail(proc.log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise StackError(
            f"{proc.name} did not answer on {url} within {timeout:.0f}s; "
            f"see {proc.log_path}:\n{_tail(proc.log_path)}"
        )

    def start(self, out: IO[str] | None = None) -> None:
        """Start everything, in dependency order; on any failure stop what started."""
        out = out or sys.stderr
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ".gitignore").write_text("*\n")
        self._secret("hmac.key", 32)
        if self.faults and self.pubsub_faults is None:
            from bqgate.dev.faults import FaultProxy

            self.pubsub_faults = FaultProxy(("127.0.0.1", self.ports["pubsub"]))
        try:
            self._start(out)
        except BaseException:
            self.stop()
            raise
        self.write_endpoints()

    def _start(self, out: IO[str]) -> None:
        bq_exe, bq_home = ensure_bigquery_emulator(out)
        java = shutil.which("java") or "java"
        pubsub_jar = sorted(glob.glob(PUBSUB_JARS))
        if not pubsub_jar or not Path(FIRESTORE_JAR).exists():
            raise StackError(
                "the Firestore and Pub/Sub emulators come with the Google Cloud "
                "SDK (gcloud components); they were not found under /usr/lib/google-cloud-sdk"
            )
        p = self.ports
        fs = self._spawn(
            "firestore",
            [
                java,
                "-cp",
                FIRESTORE_JAR,
                FIRESTORE_MAIN,
                "--host=127.0.0.1",
                f"--port={p['firestore']}",
                f"--project_id={PROJECT}",
            ],
        )
        ps = self._spawn(
            "pubsub", [java, "-jar", pubsub_jar[-1], "--host=127.0.0.1", f"--port={p['pubsub']}"]
        )
        bq_data = self.state_dir / "bigquery"
        bq_data.mkdir(exist_ok=True)
        bq = self._spawn(
            "bigquery",
            [
                str(bq_exe),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(p["bigquery"]),
                "--grpc-port",
                str(p["bigquery_grpc"]),
                "--project",
                PROJECT,
                "--dataset",
                "analytics",
                "--data-dir",
                str(bq_data),
            ],
            env={"HOME": str(bq_home)},
            cwd=self.state_dir,
        )
        py = sys.executable
        oidc = self._spawn(
            "oidc_issuer",
            [
                py,
                "-m",
                "bqgate.dev.issuer",
                "--port",
                str(p["oidc_issuer"]),
                "--state-dir",
                str(self.state_dir),
            ],
        )
        slack = self._spawn(
            "slack",
            [
                py,
                "-m",
                "bqgate.dev.slack_standin",
                "--port",
                str(p["slack"]),
                "--state-dir",
                str(self.state_dir),
            ],
            env=self.function_env(),
        )
        self._wait_http(fs, self.url("firestore") + "/")
        self._wait_http(ps, self.url("pubsub") + "/")
        self._wait_http(bq, self.url("bigquery") + f"/bigquery/v2/projects/{PROJECT}/datasets")
        self._wait_http(oidc, self.url("oidc_issuer") + "/.well-known/openid-configuration")
        self._wait_http(slack, self.url("slack") + "/")
        if self.seed:
            from bqgate.dev import demo_data

            print("bqgate: seeding the demo warehouse ...", file=out, flush=True)
            demo_data.seed(self.url("bigquery"), self.state_dir)
        ff = shutil.which("functions-framework", path=os.path.dirname(py)) or "functions-framework"
        env = self.function_env()
        functions = [
            ("gateway", "ingress", "ingress", "http"),
            ("approvals", "approvals", "approvals", "http"),
            ("executor", "executor", "executor", "cloudevent"),
            ("slack_notify", "slack_notify", "slack_notify", "cloudevent"),
            ("sweeper", "sweeper", "sweeper", "http"),
        ]
        started = []
        for port_name, folder, target, sig in functions:
            source = self.repo_root / "functions" / folder / "main.py"
            started.append(
                (
                    self._spawn(
                        f"fn-{folder}",
                        [
                            ff,
                            "--source",
                            str(source),
                            "--target",
                            target,
                            "--signature-type",
                            sig,
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(p[port_name]),
                        ],
                        env=env,
                    ),
                    port_name,
                )
            )
        for proc, port_name in started:
            self._wait_http(proc, self.url(port_name) + "/")
        self.create_topics()
        # Cloud Scheduler's part: call the sweeper (outbox reconciler, expiry, orphans).
        self._spawn(
            "scheduler",
            [
                py,
                "-m",
                "bqgate.dev.scheduler",
                "--url",
                self.url("sweeper") + "/",
                "--every",
                str(self.sweep_interval_s),
            ],
        )

    def create_topics(self) -> None:
        """Topics and push subscriptions: execute -> executor, approvals -> slack_notify,
        and each one's dead-letter topic -> the sweeper's dead-letter consumer."""
        from bqgate.adapters.emulators import create_push_topics

        create_push_topics(
            f"127.0.0.1:{self.ports['pubsub']}",
            PROJECT,
            {"execute": self.url("executor") + "/", "approvals": self.url("slack_notify") + "/"},
            dead_letter_push={
                "execute": self.url("sweeper") + "/dead-letter/execute",
                "approvals": self.url("sweeper") + "/dead-letter/approvals",
            },
        )

    def write_endpoints(self) -> Path:
        path = self.state_dir / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def stop(self) -> None:
        """Stop every process this stack started (whole process groups), then forget them."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        for proc in self.procs:
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=remaining)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=2)
        self.procs.clear()
        if self.pubsub_faults is not None:
            self.pubsub_faults.close()
            self.pubsub_faults = None
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "endpoints.json").unlink()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def snippet(endpoints: Mapping[str, str]) -> str:
    """The copy-paste Python snippet the banner prints."""
    return (
        "from bqgate.client import gateway_client\n"
        f"client = gateway_client({endpoints['gateway']!r})  # dev token for {AGENT}\n"
        'rows = client.query("SELECT name, COUNT(*) AS n FROM `demo-project.analytics.events` '
        'GROUP BY name ORDER BY n DESC").result()\n'
        "for row in rows:\n"
        "    print(row.name, row.n)\n"
    )


def banner(endpoints: Mapping[str, str]) -> str:
    lines = [
        "",
        "bqgate dev stack is up (loopback only). Ctrl-C stops everything.",
        f"Gateway: {endpoints['gateway']}",
        f"Approvals: {endpoints['approvals']}   Slack stand-in: {endpoints['slack']}",
        f"Sweeper: {endpoints['sweeper']} (outbox reconciler, expiry, dead letters)",
        f"BigQuery emulator: {endpoints['bigquery']}   OIDC issuer: {endpoints['oidc_issuer']}",
        f"Firestore: {endpoints['firestore']}   Pub/Sub: {endpoints['pubsub']}",
        f"State and logs: {endpoints['state_dir']}",
        "",
        "Mint a token:  bqgate token --principal " + AGENT,
        f"Query through the gateway (paste into {sys.executable}, which has bqgate installed):",
        "",
        snippet(endpoints),
    ]
    return "\n".join(lines)


def run_foreground(stack: Stack, out: IO[str] | None = None) -> int:
    """Start the stack, print the banner, and block until Ctrl-C or SIGTERM; then stop all."""
    out = out or sys.stdout
    stopping = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping["flag"]:
            stopping["flag"] = True
            raise KeyboardInterrupt

    # SIGINT explicitly too: a shell may start us with SIGINT ignored (background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        stack.start(out)
        print(banner(stack.endpoints()), file=out, flush=True)
        while True:
            for proc in stack.procs:
                if proc.popen.poll() is not None:
                    print(
                        f"bqgate: {proc.name} exited ({proc.popen.returncode}); "
                        f"see {proc.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nbqgate: stopping the dev stack ...", file=out, flush=True)
        return 0
    except StackError as exc:
        print(f"bqgate: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
