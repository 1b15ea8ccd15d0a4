"""``bqgate mcp``: a stdio MCP server that forwards every request to the gateway's MCP
endpoint, for agents that only launch local MCP servers.

Nothing is decided here: ``tools/list`` and ``tools/call`` go to the gateway over
Streamable HTTP with a fresh ID token (refreshed before it expires: the dev issuer
locally, Application Default Credentials in the cloud), and the gateway's answer comes
back unchanged. Each forwarded request opens its own short connection, so a gateway
restart or an expired token never strands the agent's session.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Any

import anyio
import anyio.to_thread
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from bqgate.adapters.mcp_server import sdk_server, tool_definition
from bqgate.service.mcp import TOOLS

#: Longest one forwarded call may take: execute_sql waits at most BQGATE_MCP_WAIT_MS.
CALL_TIMEOUT_S = 300.0


class CredentialsAuth(httpx2.Auth):
    """``Authorization: Bearer`` from google-auth credentials, refreshed when they are no
    longer valid (and once more if the gateway still says 401)."""

    def __init__(self, credentials: google.auth.credentials.Credentials) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()

    def token(self, *, force: bool = False) -> str:
        with self._lock:
            if force or not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            token = self._credentials.token
        if not isinstance(token, str) or not token:
            raise google.auth.exceptions.RefreshError("the credentials gave no token")
        return token

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(force=True)}"
            yield request

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = await anyio.to_thread.run_sync(self.token)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await anyio.to_thread.run_sync(lambda: self.token(force=True))
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


def _why(exc: BaseException) -> str:
    """A one-line reason for a failed forward (never a token)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"the gateway answered HTTP {exc.response.status_code}"
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return f"no token: {exc}"
    if isinstance(exc, MCPError):
        return str(exc)
    return type(exc).__name__


class Forwarder:
    """Opens a client on the gateway's MCP endpoint for each forwarded request."""

    def __init__(self, url: str, credentials: google.auth.credentials.Credentials) -> None:
        self.url = url
        self.auth = CredentialsAuth(credentials)

    def _client(self) -> Client:
        http = httpx2.AsyncClient(auth=self.auth, timeout=httpx2.Timeout(30.0, read=CALL_TIMEOUT_S))
        return Client(streamable_http_client(self.url, http_client=http))

    async def list_tools(self) -> types.ListToolsResult:
        try:
            async with self._client() as remote:
                return await remote.list_tools()
        except Exception as exc:
            # The agent reads its tool list once, at start: offer bqgate's own tool list
            # (every call still goes to the gateway, and says so if it cannot get there).
            print(
                f"bqgate mcp: cannot list the gateway's tools at {self.url} "
                f"({_why(exc)}); offering bqgate's own list",
                file=sys.stderr,
                flush=True,
            )
            return types.ListToolsResult(tools=[tool_definition(spec) for spec in TOOLS])

    async def call_tool(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        try:
            async with self._client() as remote:
                return await remote.call_tool(name, arguments or {})
        except Exception as exc:
            message = f"bqgate mcp: cannot reach the gateway at {self.url}: {_why(exc)}"
            return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def build_proxy(forwarder: Forwarder) -> Server[Any]:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return await forwarder.list_tools()

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await forwarder.call_tool(params.name, params.arguments)

    return sdk_server(list_tools, call_tool)


async def serve(url: str, credentials: google.auth.credentials.Credentials) -> None:
    """Serve MCP on stdin/stdout until the agent closes stdin."""
    server = build_proxy(Forwarder(url, credentials))
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def run(url: str, credentials: google.auth.credentials.Credentials) -> None:
    anyio.run(serve, url, credentials)


__all__ = ["CredentialsAuth", "Forwarder", "build_proxy", "run", "serve"]
