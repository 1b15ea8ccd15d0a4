"""Benchmark: what the gateway costs an agent, measured side by side with direct access.

For each dispatch path (``direct-call`` fast path and ``pubsub``), a fresh local stack:

* overhead: the same allowed SELECT through the gateway with the standard client and
  straight to the BigQuery emulator with the same client, interleaved, ``runs`` each, for
  a small result and a 10,000-row result;
* breakdown of the gateway's time from its own records (classify, dry run, dispatch hop,
  warehouse, result paging) and auth measured in-process;
* throughput: allowed queries per second with 8 concurrent agents, and the error count;
* cold start of each function (fresh interpreter to first answered request) and the
  ``python -X importtime`` top offenders.

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
TARGET_P50_OVERHEAD_MS = 100.0
STRETCH_P50_OVERHEAD_MS = 40.0
TARGET_COLD_START_S = 0.6


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
        "overhead_ms": {"p50": round(g["p50"] - d["p50"], 3), "p99": round(g["p99"] - d["p99"], 3)},
        "ratio": {"p50": round(g["p50"] / d["p50"], 3), "p99": round(g["p99"] / d["p99"], 3)},
        "breakdown_ms": {k: summary(v) for k, v in parts.items()},
        "samples": {"gateway_ms": gw_ms, "direct_ms": direct_ms},
    }


def _run(client: Any, sql: str) -> tuple[int, str]:
    job = client.query(sql)
    rows = job.result(timeout=120)
    return sum(1 for _ in rows), job.job_id


def throughput(
    make_client: Callable[[], Any], agents: int = 8, seconds: float = 10.0
) -> dict[str, Any]:
    ok = [0] * agents
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def agent(i: int) -> None:
        client = make_client()
        while time.monotonic() < stop:
            try:
                ms, _ = _timed(lambda: _run(client, SMALL))
                with lock:
                    latencies.append(ms)
                ok[i] += 1
            except Exception as exc:  # counted, reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "agents": agents,
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


def cold_starts(env: dict[str, str], token: str, runs: int = 3) -> dict[str, Any]:
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
    from bqgate.dev.stack import AGENT, DEFAULT_PORTS, Stack, free_port
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, firestore

    stack = Stack(
        state_dir=tmp / name, ports={n: free_port() for n in DEFAULT_PORTS}, fast_path=fast
    )
    stack.start()
    saved = dict(os.environ)
    try:
        env = {**os.environ, **stack.function_env()}
        os.environ.update(stack.function_env())
        store = FirestoreJobStore(firestore.Client(project="demo-project"))
        gw = gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)
        direct = bigquery.Client(
            project="demo-project",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
        )
        result: dict[str, Any] = {"fast_path": fast}
        result["small"] = overhead(gw, direct, SMALL, runs, store)
        result["large"] = overhead(gw, direct, LARGE, max(10, runs // 5), store)
        result["auth_ms"] = auth_cost(stack)
        result["throughput"] = throughput(
            lambda: gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)
        )
        if fast:
            from bqgate.dev.issuer import OIDC_SUBDIR, mint_token

            token = mint_token(
                AGENT,
                [],
                3600,
                issuer_url=stack.url("oidc_issuer"),
                key_dir=stack.state_dir / OIDC_SUBDIR,
            )
            result["cold_start"] = cold_starts(env, token)
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

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, size in zip(axes, ("small", "large"), strict=True):
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
        ax.set_title(f"{size} result ({results['paths']['direct-call'][size]['rows']} rows)")
        ax.set_ylabel("ms per query (client.query(...).result())")
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out_dir: Path, runs: int = 50) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "direct-call": run_path("direct-call", True, runs, Path(tmp)),
            "pubsub": run_path("pubsub", False, runs, Path(tmp)),
        }
    fast = paths["direct-call"]["small"]["overhead_ms"]["p50"]
    results = {
        "paths": paths,
        "targets": {
            "overhead_p50_ms": {
                "target": TARGET_P50_OVERHEAD_MS,
                "stretch": STRETCH_P50_OVERHEAD_MS,
                "measured_direct_call": fast,
                "measured_pubsub": paths["pubsub"]["small"]["overhead_ms"]["p50"],
                "met": fast <= TARGET_P50_OVERHEAD_MS,
                "stretch_met": fast <= STRETCH_P50_OVERHEAD_MS,
            },
            "cold_start_s": {n: v["met"] for n, v in paths["direct-call"]["cold_start"].items()},
            "throughput_errors": {n: p["throughput"]["errors"] for n, p in paths.items()},
        },
    }
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
