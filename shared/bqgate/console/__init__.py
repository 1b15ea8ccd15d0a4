"""The approver console: pages served by the approvals function under ``/console``.

This package is the pure half (what the pages show, SQL highlighting) plus the
templates and static files; the Flask app, the OIDC sign-in and the cookies live in
``bqgate.adapters.console_web``.

>>> is_console_path("/console"), is_console_path("/console/history"), is_console_path("/consoles")
(True, True, False)
"""

from __future__ import annotations

from pathlib import Path

#: Where the console is mounted on the approvals function.
PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def is_console_path(path: str) -> bool:
    """Whether a request path belongs to the console."""
    return path == PREFIX or path.startswith(PREFIX + "/")


__all__ = ["PREFIX", "STATIC", "TEMPLATES", "is_console_path"]
