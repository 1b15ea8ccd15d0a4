"""``python -m bench`` (what ``nox -s bench`` runs): every benchmark, JSON in bench/results/,
a short table on stdout. Benchmarks report targets as met or not; they never fail on timing.

Usage: python -m bench [--only classify,masking,memory,gateway] [--runs N] [--out DIR]

The gateway table ends with the comparison with the previous results in the output folder
(rows worse by more than 10 % are flagged REGRESSION).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _row(name: str, stats: dict[str, Any], unit: str, target: str = "") -> str:
    p95 = f"p95 {stats['p95']:>10.3f} {unit:<3} " if "p95" in stats else ""
    return (
        f"{name:<44} p50 {stats['p50']:>10.3f} {unit:<3} {p95}p99 {stats['p99']:>10.3f} "
        f"{unit:<3} runs {stats['runs']:>5}  {target}"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def gateway_lines(r: dict[str, Any]) -> list[str]:
    """The gateway benchmark as a table: each statement side by side, throughput, cold
    starts, the targets, and the comparison with the previous results."""
    import bench_gateway

    lines: list[str] = []
    for path, res in r["paths"].items():
        for size in bench_gateway.STATEMENTS:
            if size not in res:
                continue
            m = res[size]
            lines.append(_row(f"{path}: gateway, {size} ({m['rows']} rows)", m["gateway_ms"], "ms"))
            lines.append(_row(f"{path}: direct,  {size} ({m['rows']} rows)", m["direct_ms"], "ms"))
            lines.append(
                f"{'':<44} overhead p50 {m['overhead_ms']['p50']:.1f} ms "
                f"(p95 {m['overhead_ms'].get('p95', float('nan')):.1f}), "
                f"ratio p50 {m['ratio']['p50']:.2f}x"
            )
            for part, stats in m["breakdown_ms"].items():
                lines.append(_row(f"   {size} {part}", stats, "ms"))
        t = res["throughput"]
        lines.append(
            f"{path}: throughput {t['qps']} q/s with {t['agents']} agents through the gateway, "
            f"{t['emulator_alone']['qps']} q/s straight to the emulator "
            f"({t['share_of_emulator']:.0%}); {t['errors']} errors ({t['queries']} queries)"
        )
        lines.append(_row(f"{path}: auth (verify one token)", res["auth_ms"], "ms"))
    for name, c in r["paths"]["direct-call"]["cold_start"].items():
        lines.append(
            _row(
                f"cold start {name}",
                c["seconds"],
                "s",
                f"target <= {c['target_s']} s: {_met(c['met'])}",
            )
        )
    tgt = r["targets"]
    o, q, t = tgt["overhead_p50_ms"], tgt["large_ratio_p50"], tgt["throughput_share_of_emulator"]
    lines.append(
        f"small SELECT overhead p50 (direct call): {o['measured_direct_call']:.1f} ms "
        f"(target <= {o['target']:.0f}: {_met(o['met'])}); via Pub/Sub: "
        f"{o['measured_pubsub']:.1f} ms"
    )
    lines.append(
        f"10,000-row ratio p50 (direct call): {q['measured_direct_call']:.2f}x "
        f"(target <= {q['target']}: {_met(q['met'])})"
    )
    lines.append(
        f"{t['agents']} agents: gateway at {t['measured_direct_call']:.0%} of the emulator "
        f"alone, {t['errors']} errors (target >= {t['target']:.0%}, 0 errors: {_met(t['met'])})"
    )
    lines.append(f"{'compared with the previous results':<44} {'before':>10} {'now':>10}")
    for row in r["comparison"]:
        old = "-" if row["previous"] is None else f"{row['previous']:.3f}"
        flag = "REGRESSION" if row["regression"] else ("new" if row["previous"] is None else "")
        lines.append(f"  {row['row']:<42} {old:>10} {row['now']:>10.3f} {row['unit']:<3} {flag}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="classify,masking,memory,gateway")
    parser.add_argument("--runs", type=int, default=50, help="runs per gateway measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if "classify" in only:
        import bench_classify

        r = bench_classify.main(args.out)
        lines.append(json.dumps({"classify": r.get("targets", r.get("summary", {}))}, default=str))
    if "masking" in only:
        import bench_masking

        r = bench_masking.main(args.out)
        lines.append(
            json.dumps({"masking": {k: v for k, v in r.items() if k != "samples"}}, default=str)[
                :2000
            ]
        )
    if "memory" in only:
        import bench_executor_memory

        m = bench_executor_memory.main(args.out)
        lines.append(
            f"executor peak memory, {m['rows']:,}-row result: {m['peak_rss_mib']} MiB "
            f"(after imports {m['rss_after_imports_mib']} MiB; {m['pages']} pages, "
            f"{m['seconds']} s); target < {m['target_mib']} MiB: {_met(m['met'])}"
        )
    if "gateway" in only:
        import bench_gateway

        r = bench_gateway.main(args.out, runs=args.runs)
        lines.extend(gateway_lines(r))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
