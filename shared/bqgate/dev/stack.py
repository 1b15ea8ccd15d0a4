"""The local dev stack: every emulator and function of the gateway on loopback.

``bqgate dev`` (and ``nox -s dev``) runs :func:`main`; the test suite's session
fixture uses :class:`Stack` directly with free ports and a temporary state folder.
All state lives in one folder (default ``.bqgate-dev/``), which also holds
``endpoints.json``: every endpoint by name, so tools and tests find the stack
without parsing logs.

The stack supervises what it starts, as a serverless platform would: a process that
exits is started again (with a crash-loop backoff), the Pub/Sub emulator gets its topics
back, and every restart is logged in ``logs/supervisor.log``. Firestore's state survives
restarts of the emulator and of the whole stack: it is exported (the emulator's export
API) every ``snapshot_interval_s`` and when the stack stops, and imported when the
emulator starts, so at most the last few seconds of writes are lost if the whole stack
is killed outright. The BigQuery emulator keeps its data in the state folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bqgate.chain import load_or_create_dev_key
from bqgate.dev import issuer
from bqgate.settings import DEV_CONSOLE_SECRET_FILE, DEV_CONSOLE_SESSION_KEY_FILE

PROJECT = "demo-project"
AGENT = "agent@demo-project.iam.gserviceaccount.com"
LOCATION = "US"

#: Default loopback ports, by endpoint name (override with --port NAME=PORT).
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8180,
    "approvals": 8181,
    "executor": 8182,
    "slack_notify": 8183,
    "mcp": 8184,
    "sweeper": 8185,
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


#: Where free_port looks: below Linux's ephemeral range (32768-60999), so an outgoing
#: connection's source port never takes a port a stack chose before its service binds it.
#: Concurrent test workers each get their own slice (``PYTEST_XDIST_WORKER``, gw0, gw1 ...).
SERVICE_PORTS = range(20000, 32000)


def _worker_ports(ports: range) -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return ports
    size = len(ports) // count
    start = ports.start + int(worker[2:]) % count * size
    return range(start, start + size)


def free_port(ports: range = SERVICE_PORTS) -> int:
    """A port nothing listens on, from ``ports`` (this test worker's slice of it)."""
    pick = random.SystemRandom()
    mine = _worker_ports(ports)
    for _ in range(500):
        port = pick.randrange(mine.start, mine.stop)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the slice is full: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(names: Iterable[str], ports: range = SERVICE_PORTS) -> dict[str, int]:
    """One free port per name, no two the same (``free_port`` alone may pick one twice)."""
    chosen: dict[str, int] = {}
    for name in names:
        port = free_port(ports)
        while port in chosen.values():
            port = free_port(ports)
        chosen[name] = port
    return chosen


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


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
    """A supervised process: how to start it again, and how to tell it is up."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    health_url: str | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    failed_starts: int = 0
    next_start_at: float = 0.0


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
    #: Restart processes that exit (False: a dead process stays dead).
    supervise: bool = True
    #: Seconds between Firestore snapshots (0: only when the stack stops).
    snapshot_interval_s: float = 10.0
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # --- endpoints -----------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def endpoints(self) -> dict[str, str]:
        return {
            "gateway": self.url("gateway"),
            "approvals": self.url("approvals"),
            "console": self.url("approvals") + "/console/",
            "executor": self.url("executor"),
            "slack_notify": self.url("slack_notify"),
            # The MCP endpoint itself (Streamable HTTP), as an agent's MCP config names it.
            "mcp": self.url("mcp") + "/mcp",
            "sweeper": self.url("sweeper"),
            "slack": self.url("slack"),
            "oidc_issuer": self.url("oidc_issuer"),
            "bigquery": self.url("bigquery"),
            "firestore": f"127.0.0.1:{self.ports['firestore']}",
            "pubsub": f"127.0.0.1:{self.ports['pubsub']}",
            "project": PROJECT,
            "state_dir": str(self.state_dir.resolve()),
            "anchors": str((self.state_dir / "anchors").resolve()),
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
            # Metadata always comes from the executor, whichever way jobs reach it.
            "BQGATE_CATALOG_URL": self.url("executor"),
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

    def _popen(
        self, log_path: Path, argv: list[str], env: Mapping[str, str] | None, cwd: Path | None
    ) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed on stop
        try:
            return subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=str(cwd or self.repo_root),
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )
        finally:
            logf.close()

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        health_url: str | None = None,
    ) -> Proc:
        log_path = self.state_dir / "logs" / f"{name}.log"
        popen = self._popen(log_path, argv, env, cwd)
        proc = Proc(name, popen, log_path, argv, env, cwd, health_url)
        with self._lock:
            self.procs.append(proc)
        return proc

    def proc(self, name: str) -> Proc:
        """The supervised process called ``name`` (``fn-executor``, ``firestore`` ...)."""
        with self._lock:
            for proc in self.procs:
                if proc.name == name:
                    return proc
        raise KeyError(name)

    # --- supervision -----------------------------------------------------------------

    def _note(self, message: str) -> None:
        path = self.state_dir / "logs" / "supervisor.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")

    def restart(self, proc: Proc) -> None:
        """Start ``proc`` again (whatever is left of its process group is killed first),
        wait until it answers, and restore what a fresh emulator lacks."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)
        argv = self._firestore_argv() if proc.name == "firestore" else proc.argv
        proc.popen = self._popen(proc.log_path, argv, proc.env, proc.cwd)
        if proc.health_url:
            self._wait_http(proc, proc.health_url, retries=0)  # the loop retries, with backoff
        if proc.name == "pubsub":
            self.create_topics()  # a new emulator has no topics or subscriptions
        proc.started_at = time.monotonic()
        proc.restarts += 1

    def _supervise(self) -> None:
        last_snapshot = time.monotonic()
        while not self._stopping.wait(0.2):
            with self._lock:
                procs = list(self.procs)
            for proc in procs if self.supervise else ():
                if self._stopping.is_set() or proc.popen.poll() is None:
                    continue
                if time.monotonic() < proc.next_start_at:
                    continue
                code = proc.popen.returncode
                self._note(f"{proc.name} exited ({code}); restarting (restart {proc.restarts + 1})")
                try:
                    self.restart(proc)
                    self._note(f"{proc.name} is back")
                    proc.next_start_at = 0.0
                    proc.failed_starts = 0
                except (StackError, OSError) as exc:
                    # Crash-loop backoff: the n-th failed start in a row waits 2^n s (max 30).
                    proc.failed_starts += 1
                    delay = min(2.0**proc.failed_starts, 30.0)
                    proc.next_start_at = time.monotonic() + delay
                    self._note(f"{proc.name} did not come back ({exc}); next try in {delay:.0f}s")
            if (
                self.snapshot_interval_s > 0
                and time.monotonic() - last_snapshot >= self.snapshot_interval_s
            ):
                last_snapshot = time.monotonic()
                self.snapshot_firestore()

    # --- Firestore persistence -------------------------------------------------------

    @property
    def firestore_dir(self) -> Path:
        return self.state_dir / "firestore"

    def _firestore_argv(self) -> list[str]:
        p = self.ports
        argv = [
            shutil.which("java") or "java",
            "-cp",
            FIRESTORE_JAR,
            FIRESTORE_MAIN,
            "--host=127.0.0.1",
            f"--port={p['firestore']}",
            f"--project_id={PROJECT}",
        ]
        current = self.latest_snapshot()
        if current is not None:
            argv.append(f"--import-data={current}")
        return argv

    def latest_snapshot(self) -> Path | None:
        """The metadata file of the newest complete Firestore snapshot, if any."""
        pointer = self.firestore_dir / "current"
        try:
            path = Path(pointer.read_text().strip())
        except OSError:
            return None
        return path if path.is_file() else None

    def snapshot_firestore(self, timeout: float = 20.0) -> Path | None:
        """Export the Firestore emulator's data into the state folder; the newest complete
        export is what the next start imports. Returns its metadata file (None: failed)."""
        with self._lock:
            root = self.firestore_dir / "snapshots"
            root.mkdir(parents=True, exist_ok=True)
            target = root / f"{time.time_ns()}"
            target.mkdir()
            body = json.dumps(
                {
                    "database": f"projects/{PROJECT}/databases/(default)",
                    "export_directory": str(target.resolve()),
                }
            ).encode()
            request = urllib.request.Request(
                f"{self.url('firestore')}/emulator/v1/projects/{PROJECT}:export",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    resp.read()
            except (OSError, urllib.error.URLError) as exc:
                shutil.rmtree(target, ignore_errors=True)
                self._note(f"firestore snapshot failed: {exc}")
                return None
            found = sorted(target.glob("*/*.overall_export_metadata"))
            if not found:
                shutil.rmtree(target, ignore_errors=True)
                return None
            pointer = self.firestore_dir / "current"
            tmp = pointer.with_suffix(".tmp")
            tmp.write_text(str(found[0].resolve()) + "\n")
            tmp.replace(pointer)
            for old in sorted(root.iterdir())[:-2]:  # keep the newest two
                shutil.rmtree(old, ignore_errors=True)
            return found[0]

    def _wait_http(
        self, proc: Proc, url: str, timeout: float = 60.0, retries: int | None = None
    ) -> None:
        """Wait until ``url`` answers. A process that dies while starting is started again
        (twice at most when supervised) before the start counts as failed."""
        deadline = time.monotonic() + timeout
        left = (2 if self.supervise else 0) if retries is None else retries
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                if left <= 0:
                    raise StackError(
                        f"{proc.name} exited with {proc.popen.returncode}; "
                        f"see {proc.log_path}:\n{_tail(proc.log_path)}"
                    )
                left -= 1
                self._note(
                    f"{proc.name} exited ({proc.popen.returncode}) while starting; starting again"
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                argv = self._firestore_argv() if proc.name == "firestore" else proc.argv
                proc.popen = self._popen(proc.log_path, argv, proc.env, proc.cwd)
                continue
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
        # The approver console's OAuth client secret (shared with the dev issuer, which
        # reads it from here) and the key signing its session cookie.
        self._secret(DEV_CONSOLE_SECRET_FILE, 32)
        self._secret(DEV_CONSOLE_SESSION_KEY_FILE, 32)
        # The key the dev issuer's sign-in page asks for (the banner prints it).
        issuer.load_or_create_sign_in_key(self.state_dir / issuer.OIDC_SUBDIR)
        load_or_create_dev_key(self.state_dir)
        self._check_ports()
        if self.faults and self.pubsub_faults is None:
            from bqgate.dev.faults import FaultProxy

            self.pubsub_faults = FaultProxy(("127.0.0.1", self.ports["pubsub"]))
        try:
            self._start(out)
        except BaseException:
            self.stop()
            raise
        self.write_endpoints()

    def _check_ports(self) -> None:
        """Fail before starting anything if two services share a port or one is taken:
        a service that cannot bind would otherwise look healthy through whoever holds it."""
        seen: dict[int, str] = {}
        for name, port in self.ports.items():
            if port in seen:
                raise StackError(f"{seen[port]} and {name} are both given port {port}")
            seen[port] = name
        taken = [f"{n} ({p})" for n, p in self.ports.items() if _listening(p)]
        if taken:
            raise StackError(
                "something else already listens on the port of "
                + ", ".join(taken)
                + "; stop it (another `bqgate dev`?) or choose other ports"
            )

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
            "firestore", self._firestore_argv(), health_url=self.url("firestore") + "/"
        )
        ps = self._spawn(
            "pubsub",
            [java, "-jar", pubsub_jar[-1], "--host=127.0.0.1", f"--port={p['pubsub']}"],
            health_url=self.url("pubsub") + "/",
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
            health_url=self.url("bigquery") + f"/bigquery/v2/projects/{PROJECT}/datasets",
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
            health_url=self.url("oidc_issuer") + "/.well-known/openid-configuration",
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
            health_url=self.url("slack") + "/",
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
            ("executor", "executor", "executor", "http"),
            ("slack_notify", "slack_notify", "slack_notify", "cloudevent"),
            ("mcp", "mcp", "mcp", "http"),
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
                        health_url=self.url(port_name) + "/",
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
        if self.supervise or self.snapshot_interval_s > 0:
            self._stopping.clear()
            self._supervisor = threading.Thread(
                target=self._supervise, name="bqgate-supervisor", daemon=True
            )
            self._supervisor.start()

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
        """Snapshot Firestore, then stop every process this stack started (whole process
        groups) and forget them."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=30)
            self._supervisor = None
        fs = next((p for p in self.procs if p.name == "firestore"), None)
        if fs is not None and fs.popen.poll() is None:
            self.snapshot_firestore()
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


def sign_in_key(endpoints: Mapping[str, str]) -> str:
    """The dev issuer's sign-in key of the stack these endpoints describe."""
    path = Path(endpoints["state_dir"]) / issuer.OIDC_SUBDIR / issuer.SIGN_IN_KEY_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return f"(see {path})"


def banner(endpoints: Mapping[str, str]) -> str:
    lines = [
        "",
        "bqgate dev stack is up (loopback only). Ctrl-C stops everything.",
        f"Gateway: {endpoints['gateway']}",
        f"Approver console: {endpoints['console']}   (sign in as alice or bob)",
        f"  dev sign-in key (the sign-in page asks once per browser): {sign_in_key(endpoints)}",
        f"Approvals: {endpoints['approvals']}   Slack stand-in: {endpoints['slack']}",
        f"MCP (Streamable HTTP): {endpoints['mcp']}   stdio for agents: bqgate mcp",
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
        seen = {p.name: p.restarts for p in stack.procs}
        while True:
            time.sleep(0.5)
            for proc in stack.procs:
                if proc.restarts != seen.get(proc.name):
                    seen[proc.name] = proc.restarts
                    print(
                        f"bqgate: {proc.name} had exited and was restarted; see {proc.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
                elif not stack.supervise and proc.popen.poll() is not None:
                    print(
                        f"bqgate: {proc.name} exited ({proc.popen.returncode}); "
                        f"see {proc.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
    except KeyboardInterrupt:
        print("\nbqgate: stopping the dev stack ...", file=out, flush=True)
        return 0
    except StackError as exc:
        print(f"bqgate: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
