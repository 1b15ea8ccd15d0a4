"""Benchmark: the executor's peak memory on a 1,000,000-row result.

A fresh interpreter builds the executor with its real adapters (Firestore and BigQuery
emulators of a fresh local stack), runs one allowed job whose result has 1,000,000 rows (with
the policy's row cap raised above that), and reports its peak RSS (``VmHWM``) next to the
RSS after imports. Results stream from BigQuery page by page into Firestore pages, so memory
should not grow with the result. Target: peak < 256 MiB.

Run: ``python -m bench --only memory`` or ``python bench/bench_executor_memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = 1_000_000
TARGET_MIB = 256

CHILD = r"""
import dataclasses, json, sys, time
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, firestore
from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.classification import Classification
from bqgate.jobs import Job
from bqgate.policy import load_policy
from bqgate.service.executor import Executor

def hwm_mib():
    # VmHWM: this process's own peak RSS. (ru_maxrss is not: Linux carries it over execve
    # from the parent that forked us.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)

bq_url, rows = sys.argv[1], int(sys.argv[2])
policy = load_policy("policies/default.yaml")
cost = dataclasses.replace(policy.cost, max_result_rows=rows * 2)
policy = dataclasses.replace(policy, cost=cost)
store = FirestoreJobStore(firestore.Client(project="demo-project"))
client = bigquery.Client(project="demo-project", credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=bq_url))
executor = Executor(store=store, policy=policy, hmac_key=b"bench",
                    warehouse=BigQueryWarehouse(client, project="demo-project", location="US"))
sql = (f"SELECT x, CONCAT('row-', CAST(x AS STRING)) AS label, x * 1.5 AS score "
       f"FROM UNNEST(GENERATE_ARRAY(1, {rows})) AS x")
job = Job.new(job_id=f"mem-{time.time_ns()}", project="demo-project", location="US", sql=sql,
              owner="bench@example.com",
              classification=Classification("allow", statements=("SELECT",)),
              now_ms=int(time.time() * 1000))
store.create(job)
before = hwm_mib()
t0 = time.perf_counter()
outcome = executor.run(job.job_id)
seconds = time.perf_counter() - t0
done = store.get(job.job_id)
print(json.dumps({"outcome": outcome, "rows": done.total_rows, "pages": len(done.page_starts),
                  "seconds": round(seconds, 2), "rss_after_imports_mib": round(before, 1),
                  "peak_rss_mib": hwm_mib()}))
"""


def main(out_dir: Path, rows: int = ROWS) -> dict[str, Any]:
    from bqgate.dev.stack import DEFAULT_PORTS, Stack, free_ports

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(state_dir=Path(tmp), ports=free_ports(DEFAULT_PORTS), seed=False)
        stack.start()
        try:
            env = {**os.environ, **stack.function_env()}
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, stack.url("bigquery"), str(rows)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=1800,
            )
        finally:
            stack.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"executor memory run failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["target_mib"] = TARGET_MIB
    result["met"] = result["peak_rss_mib"] < TARGET_MIB and result["rows"] == rows
    (out_dir / "executor_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(
        json.dumps(
            main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results"), indent=2
        )
    )
