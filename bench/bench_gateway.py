"""Benchmark: what the gateway costs an agent, measured side by side with direct access.

For each dispatch path (``direct-call`` fast path and ``pubsub``), a fresh local stack:

* overhead: the same allowed statement through the gateway with the standard client and
  straight to the BigQuery emulator with the same client, interleaved, ``runs`` each:
  a small result, a 10,000-row result, a read of a table with sensitive columns (the
  masking rewrite: the gateway runs the rewritten statement, the emulator the plain one),
  and a write (a DELETE with a WHERE on a non-production table: the gateway measures its
  blast radius with a count query first);
* breakdown of the gateway's time from its own records (classify, dry run, dispatch hop,
  warehouse, result paging) and auth measured in-process;
* throughput: allowed queries per second with 32 concurrent agents (each its own client and
  session, four queries each), through the gateway and straight to the emulator alone
  (before and after the gateway's run, averaged), and the error count;
* cold start of each function (fresh interpreter to first answered request) and the
  ``python -X importtime`` top offenders;
* a comparison with the previous results (``bench/results/gateway.json`` as last
  committed): every row worse by more than 10 % (and 5 ms) is flagged a regression.

Run: ``python -m bench`` (all benchmarks) or ``python bench/bench_gateway.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMALL = "SELECT name, COUNT(*) AS n FROM `demo-project.analytics.events` GROUP BY name"
LARGE = "SELECT order_id, customer_id, amount, status FROM `demo-project.sales.orders`"
#: Sensitive columns (email, ssn): the gateway runs the masking rewrite of this statement.
MASKED = (
    "SELECT customer_id, email, ssn, country FROM `demo-project.sales.customers` "
    "WHERE customer_id <= 50"
)
#: A write on a non-production table whose WHERE matches nothing: allowed by the policy
#: after the gateway has measured its blast radius (a count query) at 0 rows.
WRITE = "DELETE FROM `demo-project.analytics.events` WHERE event_id < 0"
#: The statements measured side by side, by name.
STATEMENTS = {"small": SMALL, "large": LARGE, "masked": MASKED, "write": WRITE}
TARGET_P50_OVERHEAD_MS = 25.0
TARGET_LARGE_RATIO = 1.3
TARGET_THROUGHPUT_SHARE = 0.9
TARGET_COLD_START_S = 0.6
AGENTS = 32
QUERIES_PER_AGENT = 4
#: A row of the comparison is a regression when worse by more than both of these.
REGRESSION_SHARE = 0.10
REGRESSION_MS = 5.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(pct(values, 0.5), 3),
        "p95": round(pct(values, 0.95), 3),
        "p99": round(pct(values, 0.99), 3),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
        "runs": len(values),
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def overhead(gw: Any, direct: Any, sql: str, runs: int, store: Any) -> dict[str, Any]:
    gw_ms: list[float] = []
    direct_ms: list[float] = []
    parts: dict[str, list[float]] = {}
    rows_gw = rows_direct = 0
    for i in range(runs + 2):
        # Interleaved; the first two rounds warm connections and caches and are not counted.
        t_gw, (n_gw, job_id) = _timed(lambda: _run(gw, sql))
        t_direct, (n_direct, _) = _timed(lambda: _run(direct, sql))
        if i < 2:
            continue
        gw_ms.append(t_gw)
        direct_ms.append(t_direct)
        rows_gw, rows_direct = n_gw, n_direct
        job = store.get(job_id)
        if job is not None:
            t = job.timings
            for key in ("classify_ms", "dry_run_ms", "warehouse_ms", "results_ms"):
                if key in t:
                    parts.setdefault(key, []).append(float(t[key]))
            if job.started_ms and job.created_ms:
                parts.setdefault("dispatch_hop_ms", []).append(job.started_ms - job.created_ms)
            if job.ended_ms and job.created_ms:
                parts.setdefault("created_to_done_ms", []).append(job.ended_ms - job.created_ms)
                parts.setdefault("client_side_rest_ms", []).append(
                    t_gw - (job.ended_ms - job.created_ms)
                )
    assert rows_gw == rows_direct, (rows_gw, rows_direct)
    g, d = summary(gw_ms), summary(direct_ms)
    return {
        "sql": sql,
        "rows": rows_gw,
        "gateway_ms": g,
        "direct_ms": d,
        "overhead_ms": {q: round(g[q] - d[q], 3) for q in ("p50", "p95", "p99")},
        "ratio": {q: round(g[q] / d[q], 3) for q in ("p50", "p95", "p99")},
        "breakdown_ms": {k: summary(v) for k, v in parts.items()},
        "samples": {"gateway_ms": gw_ms, "direct_ms": direct_ms},
    }


def _run(client: Any, sql: str) -> tuple[int, str]:
    job = client.query(sql)
    rows = job.result(timeout=120)
    return sum(1 for _ in rows), job.job_id


def throughput(
    make_client: Callable[[int], Any],
    agents: int = AGENTS,
    queries_per_agent: int = QUERIES_PER_AGENT,
) -> dict[str, Any]:
    """Allowed small queries per second with ``agents`` threads, each its own client,
    each running ``queries_per_agent`` queries one after another; all start together.

    A fixed amount of work (not a fixed time) so no query is cut off at the edges. Each
    client gets its token before the clock starts (the dev issuer is not under test)."""
    import google.auth.transport.requests
    from google.auth.credentials import AnonymousCredentials

    ok = [0] * agents
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    clients = [make_client(i) for i in range(agents)]  # built before the clock starts
    request = google.auth.transport.requests.Request()
    for client in clients:
        creds = getattr(client, "_credentials", None)
        if creds is not None and not isinstance(creds, AnonymousCredentials) and not creds.valid:
            creds.refresh(request)
    ready = threading.Barrier(agents + 1)

    def agent(i: int) -> None:
        client = clients[i]
        ready.wait()
        for _ in range(queries_per_agent):
            try:
                ms, _ = _timed(lambda: _run(client, SMALL))
                with lock:
                    latencies.append(ms)
                ok[i] += 1
            except Exception as exc:  # counted, reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "agents": agents,
        "queries_per_agent": queries_per_agent,
        "seconds": round(elapsed, 2),
        "queries": sum(ok),
        "qps": round(sum(ok) / elapsed, 2),
        "errors": len(errors),
        "error_samples": errors[:5],
        "latency_ms": summary(latencies),
    }


COLD = """
import json, sys, time
t0 = time.perf_counter()
from functions_framework import create_app
name, target, sig, token = sys.argv[1:5]
app = create_app(target, f"functions/{name}/main.py", sig).test_client()
if name == "ingress":
    r = app.get("/bigquery/v2/projects/demo-project/jobs/cold-start-probe",
                headers={"Authorization": "Bearer " + token})
elif sig == "http":
    r = app.get("/")
else:
    import base64
    data = base64.b64encode(json.dumps({"job_id": "cold-start-probe"}).encode()).decode()
    r = app.post("/", json={"message": {"data": data, "messageId": "1"}}, headers={
        "ce-id": "1", "ce-specversion": "1.0", "ce-source": "//bench",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"})
print(json.dumps({"inside_s": time.perf_counter() - t0, "status": r.status_code}))
"""

FUNCTIONS = (
    ("ingress", "ingress", "http"),
    ("executor", "executor", "http"),
    ("approvals", "approvals", "http"),
    ("slack_notify", "slack_notify", "cloudevent"),
)


def cold_starts(env: dict[str, str], token: str, runs: int = 7) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, target, sig in FUNCTIONS:
        walls, statuses = [], set()
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", COLD, name, target, sig, token],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=120,
            )
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"cold start of {name} failed: {proc.stderr[-800:]}")
            statuses.add(json.loads(proc.stdout.strip().splitlines()[-1])["status"])
        out[name] = {
            "seconds": summary(walls),
            "statuses": sorted(statuses),
            "target_s": TARGET_COLD_START_S,
            "met": pct(walls, 0.5) <= TARGET_COLD_START_S,
            "import_offenders": import_offenders(name, env),
        }
    return out


def import_offenders(name: str, env: dict[str, str], top: int = 8) -> list[dict[str, Any]]:
    """The slowest imports (cumulative µs) of a function's main module."""
    code = (
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('m', 'functions/{name}/main.py'); "
        "m = u.module_from_spec(s); s.loader.exec_module(m)"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, module = line.split(":", 1)[1].split("|")
        if len(module) - len(module.lstrip()) > 1:
            continue  # nested import: counted in its top-level package's cumulative time
        rows.append({"module": module.strip(), "cumulative_ms": int(cum_us) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def run_path(name: str, fast: bool, runs: int, tmp: Path) -> dict[str, Any]:
    from bqgate.adapters.firestore_store import FirestoreJobStore
    from bqgate.client import gateway_client
    from bqgate.dev.stack import AGENT, DEFAULT_PORTS, Stack, free_ports
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, firestore

    stack = Stack(state_dir=tmp / name, ports=free_ports(DEFAULT_PORTS), fast_path=fast)
    stack.start()
    saved = dict(os.environ)
    try:
        env = {**os.environ, **stack.function_env()}
        os.environ.update(stack.function_env())
        store = FirestoreJobStore(firestore.Client(project="demo-project"))
        gw = gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)

        def emulator_client(i: int = 0) -> Any:
            return bigquery.Client(
                project="demo-project",
                credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
            )

        def agent_client(i: int) -> Any:
            # Each agent its own client and session (separate agents have separate
            # identities, so separate sessions: one session's record is one chain).
            client = gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)
            client.default_query_job_config = bigquery.QueryJobConfig(
                labels={"session_id": f"bench-agent-{i}"}
            )
            return client

        direct = emulator_client()
        result: dict[str, Any] = {"fast_path": fast}
        if fast:
            # First, on a quiet stack: a function starts cold on an instance of its own, not
            # on a machine still busy with the throughput run's 32 agents.
            from bqgate.dev.issuer import OIDC_SUBDIR, mint_token

            token = mint_token(
                AGENT,
                [],
                3600,
                issuer_url=stack.url("oidc_issuer"),
                key_dir=stack.state_dir / OIDC_SUBDIR,
            )
            cold = cold_starts(env, token)
        for size, sql in STATEMENTS.items():
            count = runs if size == "small" else max(10, runs // 5)
            result[size] = overhead(gw, direct, sql, count, store)
        result["auth_ms"] = auth_cost(stack)
        before = throughput(emulator_client)
        through = throughput(agent_client)
        after = throughput(emulator_client) if fast else before
        alone = round((before["qps"] + after["qps"]) / 2, 2)
        through["emulator_alone"] = {"qps": alone, "runs": [before, after] if fast else [before]}
        through["share_of_emulator"] = round(through["qps"] / alone, 3) if alone else None
        result["throughput"] = through
        if fast:
            result["cold_start"] = cold
        return result
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()


def auth_cost(stack: Any, runs: int = 200) -> dict[str, float]:
    from bqgate.adapters.oidc import OidcVerifier
    from bqgate.dev.issuer import OIDC_SUBDIR, mint_token
    from bqgate.dev.stack import AGENT
    from bqgate.policy import load_policy

    policy = load_policy(ROOT / "policies" / "default.yaml")
    verifier = OidcVerifier.from_policy(
        policy, dev_mode=True, dev_issuer_url=stack.url("oidc_issuer")
    )
    token = mint_token(
        AGENT, [], 3600, issuer_url=stack.url("oidc_issuer"), key_dir=stack.state_dir / OIDC_SUBDIR
    )
    verifier.verify(token)  # first call fetches the JWKS
    times = [_timed(lambda: verifier.verify(token))[0] for _ in range(runs)]
    return summary(times)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in STATEMENTS if s in results["paths"]["direct-call"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4))
    for ax, size in zip(axes, sizes, strict=True):
        data, labels = [], []
        first = True
        for name, res in results["paths"].items():
            if first:
                data.append(res[size]["samples"]["direct_ms"])
                labels.append("direct")
                first = False
            data.append(res[size]["samples"]["gateway_ms"])
            labels.append(f"gateway ({name})")
        ax.boxplot(data, tick_labels=labels, showfliers=True)
        ax.set_title(f"{size} ({results['paths']['direct-call'][size]['rows']} rows)")
        ax.set_ylabel("ms per query (client.query(...).result())")
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def previous_results(out_dir: Path) -> dict[str, Any] | None:
    """The results this run is compared with: ``bench/results/gateway.json`` as last
    committed (else the file this run is about to replace)."""
    try:
        proc = subprocess.run(
            ["git", "show", "HEAD:bench/results/gateway.json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        if proc.returncode == 0:
            committed: dict[str, Any] = json.loads(proc.stdout)
            return committed
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    path = out_dir / "gateway.json"
    if path.exists():
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
        except ValueError:
            return None
    return None


def _worse(new: float, old: float, *, higher_is_worse: bool, abs_floor: float) -> bool:
    if higher_is_worse:
        return new > old * (1 + REGRESSION_SHARE) and new - old > abs_floor
    return new < old * (1 - REGRESSION_SHARE) and old - new > abs_floor


def compare(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparable row of this run next to the previous one, regressions flagged.

    Latency rows compare the gateway's overhead over direct access (p50), which the
    machine's load moves less than absolute times; throughput compares queries per second
    with the same number of agents; cold starts compare seconds (p50)."""
    old_paths = (previous or {}).get("paths") or {}
    rows: list[dict[str, Any]] = []

    def add(name: str, old: float | None, new: float, unit: str, worse: bool) -> None:
        rows.append(
            {
                "row": name,
                "previous": old,
                "now": new,
                "unit": unit,
                "change": None if old is None else round(new - old, 3),
                "regression": bool(old is not None and worse),
            }
        )

    for path, res in current["paths"].items():
        old = old_paths.get(path) or {}
        for size in STATEMENTS:
            if size not in res:
                continue
            new_over = float(res[size]["overhead_ms"]["p50"])
            old_over = (old.get(size) or {}).get("overhead_ms", {}).get("p50")
            worse = old_over is not None and _worse(
                new_over, float(old_over), higher_is_worse=True, abs_floor=REGRESSION_MS
            )
            add(f"{path}: {size} overhead p50", old_over, new_over, "ms", worse)
        t, old_t = res["throughput"], old.get("throughput") or {}
        same_load = old_t.get("agents") == t["agents"]
        old_qps = old_t.get("qps") if same_load else None
        worse = old_qps is not None and _worse(
            float(t["qps"]), float(old_qps), higher_is_worse=False, abs_floor=0.5
        )
        add(f"{path}: throughput, {t['agents']} agents", old_qps, float(t["qps"]), "q/s", worse)
        for fn, c in (res.get("cold_start") or {}).items():
            new_s = float(c["seconds"]["p50"])
            old_s = ((old.get("cold_start") or {}).get(fn) or {}).get("seconds", {}).get("p50")
            worse = old_s is not None and _worse(
                new_s, float(old_s), higher_is_worse=True, abs_floor=0.05
            )
            add(f"{path}: cold start {fn}", old_s, new_s, "s", worse)
    return rows


def main(out_dir: Path, runs: int = 50) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = previous_results(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "direct-call": run_path("direct-call", True, runs, Path(tmp)),
            "pubsub": run_path("pubsub", False, runs, Path(tmp)),
        }
    fast = paths["direct-call"]
    share = fast["throughput"]["share_of_emulator"]
    results = {
        "paths": paths,
        "targets": {
            "overhead_p50_ms": {
                "target": TARGET_P50_OVERHEAD_MS,
                "measured_direct_call": fast["small"]["overhead_ms"]["p50"],
                "measured_pubsub": paths["pubsub"]["small"]["overhead_ms"]["p50"],
                "met": fast["small"]["overhead_ms"]["p50"] <= TARGET_P50_OVERHEAD_MS,
            },
            "large_ratio_p50": {
                "target": TARGET_LARGE_RATIO,
                "measured_direct_call": fast["large"]["ratio"]["p50"],
                "met": fast["large"]["ratio"]["p50"] <= TARGET_LARGE_RATIO,
            },
            "throughput_share_of_emulator": {
                "target": TARGET_THROUGHPUT_SHARE,
                "agents": fast["throughput"]["agents"],
                "measured_direct_call": share,
                "errors": fast["throughput"]["errors"],
                "met": share is not None
                and share >= TARGET_THROUGHPUT_SHARE
                and fast["throughput"]["errors"] == 0,
            },
            "cold_start_s": {n: v["met"] for n, v in fast["cold_start"].items()},
            "throughput_errors": {n: p["throughput"]["errors"] for n, p in paths.items()},
        },
    }
    results["comparison"] = compare(previous, results)
    (out_dir / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "gateway_latency.png")
    return results


if __name__ == "__main__":
    print(
        json.dumps(
            main(
                Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results",
            )["targets"],
            indent=2,
        )
    )
