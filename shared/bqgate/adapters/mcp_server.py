"""The MCP SDK edge: bqgate's tools (:mod:`bqgate.service.mcp`) as an MCP server over
Streamable HTTP, for ``functions/mcp``.

Every HTTP request is authenticated before the SDK sees it: the bearer token goes through
the same :class:`~bqgate.identity.TokenVerifier` as the REST API, and the verified
principal rides in the ASGI scope to the tool handler. The transport is stateless (a
fresh SDK session manager per request, JSON answers, no server-side session), as a
serverless function must be: any instance answers any request, and nothing a client
holds (no session id) outlives a token.

Requests carrying an ``Origin`` header (sent by web pages) are refused: no page may drive
an agent's gateway session. Tool handlers run the synchronous core in a worker thread.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bqgate import __version__
from bqgate.errors import BqgateError, Unauthenticated
from bqgate.identity import Principal, bearer_token
from bqgate.ports import TokenVerifier
from bqgate.service.http import health_check, internal_error_body
from bqgate.service.mcp import TOOLS, McpTools, ToolResult, ToolSpec

log = logging.getLogger("bqgate.mcp")

#: Where the MCP endpoint is served (``/`` answers health checks).
MCP_PATH = "/mcp"
#: ASGI scope key of the verified principal.
PRINCIPAL_KEY = "bqgate.principal"
INSTRUCTIONS = (
    "BigQuery through bqgate: every statement is judged by policy (run, blocked, or held for "
    "a human approver), sensitive columns are masked, and everything is recorded. A statement "
    "held for approval answers with its jobId: call execute_sql again with that jobId."
)


def tool_definition(spec: ToolSpec) -> types.Tool:
    """The SDK's Tool for one of bqgate's tool specs."""
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=types.ToolAnnotations(
            title=spec.title,
            read_only_hint=spec.read_only,
            destructive_hint=not spec.read_only,
            idempotent_hint=spec.read_only,
            open_world_hint=False,
        ),
    )


def call_result(result: ToolResult) -> types.CallToolResult:
    """The SDK's CallToolResult for a bqgate ToolResult."""
    return types.CallToolResult(
        content=[types.TextContent(text=result.text)],
        structured_content=result.structured,
        is_error=result.is_error,
    )


def _unexpected(name: str) -> ToolResult:
    """The answer to a failure nobody planned: no detail, an incident id to find the log,
    and not a reason a client retries."""
    incident = uuid.uuid4().hex[:12]
    log.exception("unhandled error (incident %s) in MCP tool %s", incident, name[:64])
    message = f"The gateway failed to handle the request (incident {incident})."
    return ToolResult(
        internal_error_body(message), is_error=True, summary=f"gatewayError: {message}"
    )


def build_server(tools: Callable[[], McpTools]) -> Server[Any]:
    """The low-level SDK server: ``tools/list`` from the specs, ``tools/call`` through the
    core, as the principal the HTTP edge verified."""

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool_definition(spec) for spec in TOOLS])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        request = getattr(ctx, "request", None)
        scope = getattr(request, "scope", None) or {}
        principal = scope.get(PRINCIPAL_KEY)

        def run() -> ToolResult:
            try:
                return tools().call(principal, params.name, params.arguments)
            except Exception:
                return _unexpected(params.name)

        return call_result(await anyio.to_thread.run_sync(run))

    return sdk_server(list_tools, call_tool)


def sdk_server(
    list_tools: Callable[..., Awaitable[types.ListToolsResult]],
    call_tool: Callable[..., Awaitable[types.CallToolResult]],
) -> Server[Any]:
    """The SDK server bqgate presents (its name, version and instructions) around the two
    handlers: the gateway's own (:func:`build_server`) or the stdio proxy's."""
    return Server(
        "bqgate",
        version=__version__,
        title="bqgate (BigQuery through a policy gateway)",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _rpc_error(message: str, code: int = -32001) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class McpHttpApp:
    """ASGI app of the MCP function: health at ``/``, MCP at ``/mcp``, bearer auth first."""

    def __init__(
        self, tools: Callable[[], McpTools], verifier: Callable[[], TokenVerifier]
    ) -> None:
        # Factories: the clients behind them are built on first use, not at import.
        self._verifier = verifier
        self._server = build_server(tools)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        method = scope.get("method", "GET").upper()
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []
        }
        health = health_check("mcp", "GET" if method == "HEAD" else method, path)
        if health is not None:
            await _json(send, health.status, {**health.body, "endpoint": MCP_PATH})
            return
        if path.rstrip("/") != MCP_PATH:
            await _json(
                send,
                404,
                _rpc_error(f"Not found: {path[:100]}; the MCP endpoint is {MCP_PATH}", -32601),
            )
            return
        if "origin" in headers:
            await _json(
                send,
                403,
                _rpc_error("Requests from web pages (an Origin header) are refused by bqgate"),
            )
            return
        try:
            token = bearer_token(headers.get("authorization"))
            principal: Principal = await anyio.to_thread.run_sync(self._verifier().verify, token)
        except BqgateError as err:
            status = 401 if isinstance(err, Unauthenticated) else err.http_status
            await _json(
                send,
                status,
                _rpc_error(f"{err.reason}: {err.message}"),
                {"WWW-Authenticate": 'Bearer realm="bqgate"'} if status == 401 else None,
            )
            return
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("token verification failed unexpectedly (incident %s)", incident)
            await _json(
                send,
                500,
                _rpc_error(f"The gateway failed to verify the token (incident {incident})", -32603),
            )
            return
        manager = StreamableHTTPSessionManager(self._server, stateless=True, json_response=True)
        async with manager.run():
            await manager.handle_request({**scope, PRINCIPAL_KEY: principal}, receive, send)


class AsgiResponse(Response):
    """A functions-framework answer that hands the whole exchange to an ASGI app (the SDK
    transport reads the body and writes the answer itself)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        super().__init__()
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


__all__ = [
    "MCP_PATH",
    "AsgiResponse",
    "McpHttpApp",
    "build_server",
    "call_result",
    "tool_definition",
]
