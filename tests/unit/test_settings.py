"""Configuration: the README's environment table lists exactly ``settings.ENV_VARS``."""

from __future__ import annotations

from pathlib import Path

from bqgate.settings import ENV_VARS

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> list[str]:
    """The README's rows for ``ENV_VARS``: name, default (``—`` for none), meaning."""
    return [
        f"| `{name}` | {f'`{default}`' if default else '—'} | {meaning} |"
        for name, (default, meaning) in ENV_VARS.items()
    ]


def test_the_readme_environment_table_is_the_settings_table() -> None:
    section = README.read_text().split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == table_rows()
