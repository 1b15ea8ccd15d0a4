"""`bqgate dev` (what `nox -s dev` runs): banner, endpoints.json, and Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bqgate.dev.stack import DEFAULT_PORTS, free_ports

pytestmark = pytest.mark.system


def _processes_mentioning(needle: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if needle in line and "ps -eo" not in line]


def test_dev_prints_banner_writes_endpoints_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "devstate"
    ports = free_ports(DEFAULT_PORTS)
    argv = [sys.executable, "-m", "bqgate.cli", "dev", "--state-dir", str(state)]
    for name, port in ports.items():
        argv += ["--port", f"{name}={port}"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("    print(row.name, row.n)"):
                break
        text = "".join(lines)
        assert f"Gateway: http://127.0.0.1:{ports['gateway']}" in text, text
        assert "from bqgate.client import gateway_client" in text
        endpoints = json.loads((state / "endpoints.json").read_text())
        for name in (
            "gateway",
            "approvals",
            "slack",
            "bigquery",
            "firestore",
            "pubsub",
            "oidc_issuer",
            "mcp",
        ):
            assert str(ports[name]) in endpoints[name]
        assert endpoints["console"] == f"http://127.0.0.1:{ports['approvals']}/console/"
        assert f"Approver console: {endpoints['console']}" in text
        key = (state / "oidc" / "sign-in-key").read_text().strip()
        assert f"dev sign-in key (the sign-in page asks once per browser): {key}" in text
        assert _processes_mentioning(str(state)), "the stack's processes should be running"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(timeout=60)
    time.sleep(0.5)
    assert _processes_mentioning(str(state)) == []
    assert _processes_mentioning(f"--port={ports['firestore']}") == []
    assert _processes_mentioning(f"--port {ports['gateway']}") == []
    assert not (state / "endpoints.json").exists()


def test_free_ports_never_gives_two_services_one_port() -> None:
    for _ in range(50):
        ports = free_ports(DEFAULT_PORTS)
        assert len(set(ports.values())) == len(ports)


def test_a_port_shared_or_taken_fails_the_start_naming_it(tmp_path: Path) -> None:
    from bqgate.dev.stack import Stack, StackError

    ports = free_ports(DEFAULT_PORTS)
    shared = {**ports, "mcp": ports["gateway"]}
    with pytest.raises(StackError, match=r"gateway and mcp are both given port"):
        Stack(state_dir=tmp_path / "a", ports=shared).start()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["mcp"]))
        holder.listen()
        with pytest.raises(
            StackError, match=rf"already listens on the port of mcp \({ports['mcp']}\)"
        ):
            Stack(state_dir=tmp_path / "b", ports=ports).start()
