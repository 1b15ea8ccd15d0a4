"""MCP: Google's BigQuery MCP tools over Streamable HTTP, through the gateway's core.

An ASGI function (functions-framework's ``aio``): the MCP SDK's transport is ASGI. Thin:
the answer is the SDK edge of ``bqgate.adapters.mcp_server`` serving the request.
"""

from __future__ import annotations

import functions_framework.aio
from bqgate import bootstrap, runtime
from bqgate.adapters.mcp_server import AsgiResponse
from starlette.requests import Request

runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.aio.http
async def mcp(request: Request) -> AsgiResponse:
    return AsgiResponse(bootstrap.mcp_app())
