"""The blocking client: one HTTP/1.1 keep-alive connection (http.client).

A client is safe to share between threads: requests on it are serialised by
a lock. Use one client per thread for parallel requests.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, TypeVar, Union

from . import _core
from ._core import Call, Endpoint, Plan, Response, Retry, TransportError
from .types import Decision, GenerationTarget, Health, ModuleSpec, ParametersAnswer, Report, RetryPolicy
from .version import __version__

__all__ = ["ParamoptClient"]

T = TypeVar("T")

# What a kept-alive connection closed under us looks like; the request is
# sent once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


class ParamoptClient:
    """Sync client of the paramopt API (API.md, /v1).

    `retry` says how calls are retried (RetryPolicy: connection errors, 5xx
    and 429, with backoff; outcomes are idempotent, so a retried outcome
    that gets 409 counts as delivered). `timeout` is per attempt, in seconds.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8700",
        token: Optional[str] = None,
        timeout: float = 5.0,
        retry: Optional[RetryPolicy] = None,
    ) -> None:
        self.base_url = base_url
        self._endpoint = Endpoint.parse(base_url)
        self._timeout = timeout
        self._retry = retry if retry is not None else RetryPolicy()
        self._headers = _core.headers(token, f"paramopt-client/{__version__} (sync)")
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ API

    def decide(
        self,
        module: str,
        session: str,
        regime: str,
        features: Optional[Mapping[str, float]] = None,
        explore: bool = True,
        strategy: Optional[str] = None,
    ) -> Decision:
        """Parameters for one trade in this session and regime: a Decision
        with `decision_id`, `parameters` ({"<group>.<name>": value} for every
        parameter) and `policy_generation`; `raw` has the rest. `strategy`
        names the module's strategy for this trade (sent as the request's
        top-level `strategy`)."""
        return self._run(_core.decide(module, session, regime, features, explore, strategy))

    def report(
        self,
        decision: Union[Decision, str],
        reward: Optional[float] = None,
        traded: bool = True,
        trade: Optional[Mapping[str, Any]] = None,
    ) -> Report:
        """The outcome of a decision (a Decision or its id). Give `reward`, or
        a `trade` with `return_pct` to derive it from; `traded=False` (skipped
        because of the confidence threshold) means reward 0 unless given.
        Raises UnknownDecision (404), or DuplicateOutcome (409) when the
        decision already had an outcome before this call; a 409 on a retry
        returns a delivered Report. A fallback decision's outcome is not sent."""
        return self._run(_core.report(decision, reward, traded, trade))

    def report_skipped(
        self,
        decision: Union[Decision, str],
        confidence: Optional[float] = None,
        strategy: Optional[str] = None,
        **module_fields: Any,
    ) -> Report:
        """The module skipped the trade (its confidence was below the
        threshold): traded=false, return 0, `trade.confidence`. Other keywords
        are the module's own trade fields."""
        trade = _core.skipped_trade(decision, confidence, strategy, module_fields)
        return self.report(decision, traded=False, trade=trade)

    def report_closed(
        self,
        decision: Union[Decision, str],
        return_pct: float,
        strategy: Optional[str] = None,
        confidence: Optional[float] = None,
        path: Optional[Sequence[float]] = None,
        reward: Optional[float] = None,
        **module_fields: Any,
    ) -> Report:
        """The trade closed with `return_pct` (a fraction): traded=true, and
        `trade.return_pct`, `trade.strategy` (the decision's unless given),
        `trade.confidence`, `trade.exit_analysis.path` (the position's return
        at each check). Every other keyword (symbol, side, quantity, price,
        profit_loss, exit_reason, exit_analysis, or the module's own fields)
        goes into the trade at its top level. The reward is derived from
        `return_pct` unless `reward` is given."""
        trade = _core.closed_trade(decision, return_pct, strategy, confidence, path, module_fields)
        return self.report(decision, reward=reward, traded=True, trade=trade)

    def parameters(self, module: str, session: str, regime: str) -> ParametersAnswer:
        """The current greedy (incumbent) values, without exploring or recording a decision."""
        return self._run(_core.parameters(module, session, regime))

    def modules(self) -> List[ModuleSpec]:
        """Every module's parameter space (with each parameter's seed `default`)."""
        return self._run(_core.modules())

    def checkpoints(self, module: str) -> List[Dict[str, Any]]:
        """The module's checkpoint generations, newest first."""
        return self._run(_core.checkpoints(module))

    def checkpoint(self, module: str, generation: int) -> Dict[str, Any]:
        """One whole checkpoint."""
        return self._run(_core.checkpoint(module, generation))

    def create_checkpoint(self, module: str) -> Dict[str, Any]:
        """Checkpoints the module now."""
        return self._run(_core.create_checkpoint(module))

    def rollback(self, module: str, to: GenerationTarget) -> Dict[str, Any]:
        """Makes a new generation equal to generation `to`, or to the seed defaults with `to="defaults"`."""
        return self._run(_core.rollback(module, to))

    def start_ab_test(self, module: str, challenger: Union[int, str, Mapping[str, float]], **settings: Any) -> Dict[str, Any]:
        """Starts an A/B test. `challenger` is a generation number, "defaults", or
        {"group.name": value, ...}; settings: split, min_outcomes, max_outcomes, alpha, margin."""
        return self._run(_core.start_ab_test(module, challenger, settings))

    def ab_test(self, module: str) -> Dict[str, Any]:
        """The running A/B test (`running`, or None) and how the last one ended (`last`)."""
        return self._run(_core.ab_test(module))

    def stop_ab_test(self, module: str) -> Dict[str, Any]:
        """Ends the running A/B test without a verdict; the live policy stays."""
        return self._run(_core.stop_ab_test(module))

    def health(self) -> Health:
        """`GET /healthz`."""
        return self._run(_core.health())

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "ParamoptClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _run(self, plan: Plan[T]) -> T:
        if plan.call is None:
            return plan.convert(None)
        attempt = 0
        while True:
            attempt += 1
            result: Union[Response, TransportError]
            try:
                result = self._exchange(plan.call)
            except TransportError as e:
                result = e
            step = _core.next_step(plan.call, attempt, self._retry, result)
            if isinstance(step, Retry):
                time.sleep(step.delay)
                continue
            return plan.convert(step)

    def _exchange(self, call: Call) -> Response:
        headers = dict(self._headers)
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        where = f"{self._endpoint.host}:{self._endpoint.port}"
        with self._lock:
            for resend in (False, True):
                reused = self._conn is not None
                conn = self._conn if self._conn is not None else self._open()
                try:
                    # Header and body in one write: no Nagle/delayed-ACK stall.
                    conn.request(call.method, self._endpoint.prefix + call.path, body=call.body, headers=headers)
                    response = conn.getresponse()
                    status, raw = response.status, response.read()
                    names = {k.lower(): v for k, v in response.getheaders()}
                    if response.will_close:
                        self._drop()
                    return Response(status, names, raw, resent=resend)
                except _STALE as e:
                    self._drop()
                    if reused and not resend:
                        continue
                    raise TransportError(f"connection to {where} lost: {e!r}", sent=True) from None
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    raise TransportError(f"no answer from {where}: {e!r}", sent=True) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self) -> http.client.HTTPConnection:
        e = self._endpoint
        cls = http.client.HTTPSConnection if e.https else http.client.HTTPConnection
        conn = cls(e.host, e.port, timeout=self._timeout)
        try:
            conn.connect()
        except OSError as err:
            conn.close()
            raise TransportError(f"cannot reach {e.host}:{e.port}: {err!r}", sent=False) from None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
