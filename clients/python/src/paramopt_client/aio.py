"""The asyncio client: the same methods as ParamoptClient, as coroutines,
over asyncio streams (HTTP/1.1 keep-alive, standard library only).

Concurrent calls on one client use up to `max_connections` kept-alive
connections; more wait for one to be free.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from . import _core
from ._core import Call, Endpoint, Plan, Response, Retry, TransportError
from .types import Decision, GenerationTarget, Health, ModuleSpec, ParametersAnswer, Report, RetryPolicy
from .version import __version__

__all__ = ["AsyncParamoptClient"]

T = TypeVar("T")


class _Closed(Exception):
    """The server closed the connection before answering."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


class AsyncParamoptClient:
    """Asyncio client of the paramopt API (API.md, /v1); see ParamoptClient
    for what each method does. Use it as `async with AsyncParamoptClient(...)
    as pm:` or call `await pm.aclose()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8700",
        token: Optional[str] = None,
        timeout: float = 5.0,
        retry: Optional[RetryPolicy] = None,
        max_connections: int = 4,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.base_url = base_url
        self._endpoint = Endpoint.parse(base_url)
        self._timeout = timeout
        self._retry = retry if retry is not None else RetryPolicy()
        self._headers = _core.headers(token, f"paramopt-client/{__version__} (asyncio)")
        self._max_connections = max_connections
        self._idle: List[_Connection] = []
        # Made on first use, inside the running loop (Python 3.9 binds a
        # semaphore to the loop current when it is made).
        self._slots: Optional[asyncio.Semaphore] = None

    # ------------------------------------------------------------------ API

    async def decide(
        self,
        module: str,
        session: str,
        regime: str,
        features: Optional[Mapping[str, float]] = None,
        explore: bool = True,
        strategy: Optional[str] = None,
    ) -> Decision:
        """As `ParamoptClient.decide`."""
        return await self._run(_core.decide(module, session, regime, features, explore, strategy))

    async def report(
        self,
        decision: Union[Decision, str],
        reward: Optional[float] = None,
        traded: bool = True,
        trade: Optional[Mapping[str, Any]] = None,
    ) -> Report:
        """As `ParamoptClient.report`."""
        return await self._run(_core.report(decision, reward, traded, trade))

    async def report_skipped(
        self,
        decision: Union[Decision, str],
        confidence: Optional[float] = None,
        strategy: Optional[str] = None,
        **module_fields: Any,
    ) -> Report:
        """As `ParamoptClient.report_skipped`."""
        trade = _core.skipped_trade(decision, confidence, strategy, module_fields)
        return await self.report(decision, traded=False, trade=trade)

    async def report_closed(
        self,
        decision: Union[Decision, str],
        return_pct: float,
        strategy: Optional[str] = None,
        confidence: Optional[float] = None,
        path: Optional[Sequence[float]] = None,
        reward: Optional[float] = None,
        **module_fields: Any,
    ) -> Report:
        """As `ParamoptClient.report_closed`."""
        trade = _core.closed_trade(decision, return_pct, strategy, confidence, path, module_fields)
        return await self.report(decision, reward=reward, traded=True, trade=trade)

    async def parameters(self, module: str, session: str, regime: str) -> ParametersAnswer:
        """As `ParamoptClient.parameters`."""
        return await self._run(_core.parameters(module, session, regime))

    async def modules(self) -> List[ModuleSpec]:
        """As `ParamoptClient.modules`."""
        return await self._run(_core.modules())

    async def checkpoints(self, module: str) -> List[Dict[str, Any]]:
        """As `ParamoptClient.checkpoints`."""
        return await self._run(_core.checkpoints(module))

    async def checkpoint(self, module: str, generation: int) -> Dict[str, Any]:
        """As `ParamoptClient.checkpoint`."""
        return await self._run(_core.checkpoint(module, generation))

    async def create_checkpoint(self, module: str) -> Dict[str, Any]:
        """As `ParamoptClient.create_checkpoint`."""
        return await self._run(_core.create_checkpoint(module))

    async def rollback(self, module: str, to: GenerationTarget) -> Dict[str, Any]:
        """As `ParamoptClient.rollback`."""
        return await self._run(_core.rollback(module, to))

    async def start_ab_test(
        self, module: str, challenger: Union[int, str, Mapping[str, float]], **settings: Any
    ) -> Dict[str, Any]:
        """As `ParamoptClient.start_ab_test`."""
        return await self._run(_core.start_ab_test(module, challenger, settings))

    async def ab_test(self, module: str) -> Dict[str, Any]:
        """As `ParamoptClient.ab_test`."""
        return await self._run(_core.ab_test(module))

    async def stop_ab_test(self, module: str) -> Dict[str, Any]:
        """As `ParamoptClient.stop_ab_test`."""
        return await self._run(_core.stop_ab_test(module))

    async def health(self) -> Health:
        """As `ParamoptClient.health`."""
        return await self._run(_core.health())

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            try:
                await conn.writer.wait_closed()
            except Exception:  # noqa: BLE001 - already broken
                pass

    async def __aenter__(self) -> "AsyncParamoptClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ------------------------------------------------------------ transport

    async def _run(self, plan: Plan[T]) -> T:
        if plan.call is None:
            return plan.convert(None)
        attempt = 0
        while True:
            attempt += 1
            result: Union[Response, TransportError]
            try:
                result = await self._exchange(plan.call)
            except TransportError as e:
                result = e
            step = _core.next_step(plan.call, attempt, self._retry, result)
            if isinstance(step, Retry):
                await asyncio.sleep(step.delay)
                continue
            return plan.convert(step)

    async def _exchange(self, call: Call) -> Response:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        where = f"{self._endpoint.host}:{self._endpoint.port}"
        async with self._slots:
            for resend in (False, True):
                # A resend goes on a fresh connection: the idle ones are as old.
                conn = self._idle.pop() if self._idle and not resend else None
                reused = conn is not None
                if conn is None:
                    conn = await self._open()
                try:
                    response, keep = await asyncio.wait_for(self._roundtrip(conn, call, resend), self._timeout)
                except (_Closed, asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
                    conn.close()
                    if reused and not resend:
                        continue  # the kept-alive connection was closed under us
                    raise TransportError(f"connection to {where} lost: {e!r}", sent=True) from None
                except (OSError, asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError) as e:
                    conn.close()
                    raise TransportError(f"no answer from {where}: {e!r}", sent=True) from None
                except BaseException:
                    conn.close()  # cancelled: the connection is mid-exchange
                    raise
                if keep:
                    self._idle.append(conn)
                else:
                    conn.close()
                return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(self) -> _Connection:
        e = self._endpoint
        context = ssl.create_default_context() if e.https else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(e.host, e.port, ssl=context, server_hostname=e.host if e.https else None),
                self._timeout,
            )
        except (OSError, asyncio.TimeoutError) as err:
            raise TransportError(f"cannot reach {e.host}:{e.port}: {err!r}", sent=False) from None
        return _Connection(reader, writer)

    async def _roundtrip(self, conn: _Connection, call: Call, resent: bool) -> Tuple[Response, bool]:
        body = call.body or b""
        lines = [f"{call.method} {self._endpoint.prefix}{call.path} HTTP/1.1", f"Host: {self._endpoint.authority}"]
        lines += [f"{k}: {v}" for k, v in self._headers.items()]
        if call.body is not None:
            lines.append("Content-Type: application/json")
        if call.body is not None or call.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        # Header and body in one write.
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await conn.writer.drain()

        status_line = await conn.reader.readline()
        if not status_line:
            raise _Closed("closed before the status line")
        version, status_text = status_line.decode("latin-1").split(" ", 2)[:2]
        status = int(status_text)
        names: Dict[str, str] = {}
        while True:
            line = await conn.reader.readline()
            if not line:
                raise _Closed("closed inside the headers")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            names[name.strip().lower()] = value.strip()
        keep = version != "HTTP/1.0" and names.get("connection", "").lower() != "close"
        if names.get("transfer-encoding", "").lower() == "chunked":
            raw = await _chunked(conn.reader)
        elif "content-length" in names:
            raw = await conn.reader.readexactly(int(names["content-length"]))
        elif status in (204, 304) or 100 <= status < 200 or call.method == "HEAD":
            raw = b""
        else:
            raw = await conn.reader.read()
            keep = False
        return Response(status, names, raw, resent=resent), keep


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: List[bytes] = []
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise _Closed("closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
