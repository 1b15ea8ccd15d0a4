"""``bqgate explain``: through bqgate.cli.main, plus one run of the installed script."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bqgate.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "default.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_drop_is_blocked(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["explain", "--json", "DROP TABLE demo-project.analytics.events"])
    assert data["decision"] == "block"
    assert data["statements"] == ["DROP"]
    assert data["tables"] == ["demo-project.analytics.events"]
    assert data["reasons"] == [
        "statement 1 (DROP): DDL on demo-project.analytics.events (non-production) "
        "is blocked by policy"
    ]


def test_select_one_is_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert _json(capsys, ["explain", "--json", "SELECT 1"])["decision"] == "allow"


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "UPDATE sales.orders SET status = 'x' WHERE order_id = 1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [
        "decision:   approve",
        "statements: UPDATE",
        "tables:     demo-project.sales.orders",
    ]
    assert "needs approval" in out


def test_sql_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT * FROM finance.ledger"))
    data = _json(capsys, ["explain", "--json", "-"])
    assert data["decision"] == "approve"
    monkeypatch.setattr(sys, "stdin", io.StringIO("DELETE FROM analytics.events"))
    assert _json(capsys, ["explain", "--json"])["decision"] == "block"


def test_principal_group_project_and_dataset_options(capsys: pytest.CaptureFixture[str]) -> None:
    stranger = ["--principal", "eve@example.com"]
    sql = "SELECT * FROM events"
    base = ["explain", "--json", "--dataset", "analytics"]
    assert _json(capsys, [*base, *stranger, sql])["decision"] == "block"
    claimed = _json(capsys, [*base, *stranger, "--group", "ai-coding-agents", sql])
    assert claimed["decision"] == "allow"
    assert claimed["tables"] == ["demo-project.analytics.events"]
    other = _json(capsys, [*base, "--project", "other-project", sql])
    assert (other["decision"], other["tables"]) == ("block", ["other-project.analytics.events"])


def test_explicit_policy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = POLICY.read_text().replace(
        "    read: allow\n    write: allow\n",
        "    read: allow\n    write: allow\n    ddl: allow\n",
        1,
    )
    custom = tmp_path / "custom.yaml"
    custom.write_text(text)
    data = _json(
        capsys, ["explain", "--json", "--policy", str(custom), "CREATE TABLE analytics.x (a INT64)"]
    )
    assert data["decision"] == "allow"


def test_jsonl(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        json.dumps({"sql": "SELECT 1"}),
        "not json",
        json.dumps({"sql": "DROP TABLE analytics.events"}),
        json.dumps({"nosql": 1}),
        "",
        json.dumps(
            {
                "sql": "SELECT * FROM events",
                "dataset": "analytics",
                "principal": "eve@example.com",
                "groups": ["ai-coding-agents"],
            }
        ),
        json.dumps({"sql": "SELECT 1", "groups": "ai-coding-agents"}),
        json.dumps(["SELECT 1"]),
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["explain", "--jsonl"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("decision", "error") for r in out] == [
        "allow",
        "error",
        "block",
        "error",
        "allow",
        "error",
        "error",
    ]
    assert out[1]["error"].startswith("invalid JSON")
    assert out[3]["error"] == 'missing "sql" (a string)'
    assert out[5]["error"] == '"groups" must be a list of strings'


def test_jsonl_with_sql_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--jsonl", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bqgate: --jsonl reads SQL from stdin")


def test_bad_policy_is_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    typo = ROOT / "tests" / "fixtures" / "policies" / "typo.yaml"
    assert main(["explain", "--policy", str(typo), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err == f"bqgate: {typo}: rules[0].raed: unknown key\n"


def test_missing_policy_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["explain", "--policy", str(tmp_path / "none.yaml"), "SELECT 1"]) == 2
    assert "cannot read policy file" in capsys.readouterr().err


def test_default_policy_found_from_another_directory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _json(capsys, ["explain", "--json", "SELECT 1"])["decision"] == "allow"


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", "--json", "--jsonl"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_installed_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("bqgate")
    exe = str(script) if script.exists() else shutil.which("bqgate")
    assert exe is not None, "`pip install -e .` installs the bqgate script"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [exe, "explain", "--json", "DROP TABLE demo-project.analytics.events"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"decision": "block"' in proc.stdout
    assert "Traceback" not in proc.stderr
