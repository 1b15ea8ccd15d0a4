"""bqgate: a Layer-7 gateway between AI coding agents and BigQuery.

The pure core (policy, sql, masking, approvals, audit, wire, service) imports
no ``google.*``, ``slack_sdk`` or ``flask``; only ``bqgate.adapters`` does.
"""

from __future__ import annotations

__version__ = "0.1.0"
