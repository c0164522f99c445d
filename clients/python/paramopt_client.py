"""Python client for the paramopt HTTP API (API.md), standard library only.

A trading module asks for its parameters before a trade and reports the
outcome when the trade closes::

    from paramopt_client import ParamoptClient

    pm = ParamoptClient("http://127.0.0.1:8700", token=os.environ.get("PARAMOPT_TOKEN"))
    d = pm.decide("crypto", "asia_prime", "bullish", features={"momentum_score": 0.72})
    threshold = d["parameters"]["session_confidence.asia_prime"]
    ...
    pm.report(d["decision_id"], trade={"symbol": "BTCUSD", "side": "BUY", "return_pct": 0.0123})

One client keeps one HTTP/1.1 keep-alive connection (the server sets
TCP_NODELAY, so there is no 40 ms delayed-ACK stall per request). A client is
safe to share between threads: requests on it are serialised by a lock; use one
client per thread for parallel requests.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "ParamoptClient",
    "ParamoptError",
    "InvalidRequest",
    "Unauthorized",
    "NotFound",
    "UnknownDecision",
    "DuplicateOutcome",
    "PayloadTooLarge",
    "Unavailable",
]


class ParamoptError(Exception):
    """Any refusal or failure. `status` is the HTTP status (None when the
    server could not be reached); `message` is the server's `error` text."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status


class InvalidRequest(ParamoptError):
    """400 or 422: malformed JSON, unknown module/context/feature, non-finite
    numbers, no reward and no trade.return_pct, …"""


class PayloadTooLarge(InvalidRequest):
    """413: the request body is over the server's limit."""


class Unauthorized(ParamoptError):
    """401: missing or wrong bearer token."""


class NotFound(ParamoptError):
    """404: no such route, checkpoint or decision."""


class UnknownDecision(NotFound):
    """404 on an outcome: the decision_id is unknown or has expired."""


class Conflict(ParamoptError):
    """409: the request clashes with the server's state."""


class AbTestRunning(Conflict):
    """409: an A/B test is already running on the module."""


class DuplicateOutcome(Conflict):
    """409: an outcome is already recorded for this decision."""


class Unavailable(ParamoptError):
    """5xx, or the server cannot be reached."""


# Connection failures that mean a kept-alive connection was closed under us;
# the request is retried once on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


class ParamoptClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8700", token: Optional[str] = None, timeout: float = 5.0):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
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
    ) -> Dict[str, Any]:
        """Parameters for one trade. Returns the decision: `decision_id`,
        `parameters` ({"<group>.<name>": value} for every parameter),
        `policy_generation`, and more (arms, propensities, …)."""
        body: Dict[str, Any] = {"module": module, "context": {"session": session, "regime": regime}, "explore": explore}
        if features:
            body["features"] = dict(features)
        return self._request("POST", "/v1/decisions", body)

    def report(
        self,
        decision_id: str,
        reward: Optional[float] = None,
        traded: bool = True,
        trade: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """The outcome of a decision. Give `reward`, or a `trade` with
        `return_pct` to derive it from; `traded=False` (skipped because of the
        confidence threshold) means reward 0 unless given. Raises
        UnknownDecision (404) or DuplicateOutcome (409). After a dropped
        connection the report is retried once, so a DuplicateOutcome can then
        mean the first attempt landed."""
        body: Dict[str, Any] = {"decision_id": decision_id, "traded": traded}
        if reward is not None:
            body["reward"] = reward
        if trade is not None:
            body["trade"] = dict(trade)
        return self._request("POST", "/v1/outcomes", body, not_found=UnknownDecision)

    def parameters(self, module: str, session: str, regime: str) -> Dict[str, Any]:
        """The current greedy (incumbent) values, without exploring or recording a decision."""
        query = urllib.parse.urlencode({"session": session, "regime": regime})
        return self._request("GET", f"/v1/parameters/{_seg(module)}?{query}")

    def modules(self) -> List[Dict[str, Any]]:
        """Every module's parameter space."""
        return self._request("GET", "/v1/modules")["modules"]

    def checkpoints(self, module: str) -> List[Dict[str, Any]]:
        """The module's checkpoint generations, newest first."""
        query = urllib.parse.urlencode({"module": module})
        return self._request("GET", f"/v1/checkpoints?{query}")["checkpoints"]

    def checkpoint(self, module: str, generation: int) -> Dict[str, Any]:
        """One whole checkpoint."""
        return self._request("GET", f"/v1/checkpoints/{_seg(module)}/{int(generation)}")

    def create_checkpoint(self, module: str) -> Dict[str, Any]:
        """Checkpoints the module now."""
        return self._request("POST", f"/v1/checkpoints/{_seg(module)}", {})

    def rollback(self, module: str, to: Union[int, str]) -> Dict[str, Any]:
        """Makes a new generation equal to generation `to`, or to the seed defaults with `to="defaults"`."""
        return self._request("POST", "/v1/rollback", {"module": module, "to": to})

    def start_ab_test(self, module: str, challenger: Union[int, str, Dict[str, float]], **settings: Any) -> Dict[str, Any]:
        """Starts an A/B test. `challenger` is a generation number, "defaults", or
        {"group.name": value, ...}; settings: split, min_outcomes, max_outcomes, alpha, margin."""
        if isinstance(challenger, dict):
            challenger = {"parameters": challenger}
        body = {"module": module, "challenger": challenger, **settings}
        return self._request("POST", "/v1/ab-tests", body, conflict=AbTestRunning)["ab_test"]

    def ab_test(self, module: str) -> Dict[str, Any]:
        """The running A/B test (`running`, or None) and how the last one ended (`last`)."""
        return self._request("GET", f"/v1/ab-tests/{_seg(module)}")

    def stop_ab_test(self, module: str) -> Dict[str, Any]:
        """Ends the running A/B test without a verdict; the live policy stays."""
        return self._request("DELETE", f"/v1/ab-tests/{_seg(module)}")["stopped"]

    def health(self) -> Dict[str, Any]:
        return self._request("GET", "/healthz")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "ParamoptClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _request(
        self, method: str, path: str, body: Any = None, not_found: type = NotFound, conflict: type = DuplicateOutcome
    ) -> Any:
        # allow_nan=False: NaN and Infinity are not JSON; refuse them here
        # rather than send something the server must reject.
        try:
            data = None if body is None else json.dumps(body, allow_nan=False).encode()
        except ValueError as e:
            raise InvalidRequest(f"not sendable as JSON: {e}") from None
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    # Header and body in one write: no Nagle/delayed-ACK stall on our side either.
                    conn.request(method, self._prefix + path, body=data, headers=headers)
                    response = conn.getresponse()
                    status, raw = response.status, response.read()
                    if response.will_close:
                        self._drop()
                    break
                except _STALE as e:
                    self._drop()
                    if attempt == 1:
                        raise Unavailable(f"connection to {self._host}:{self._port} lost: {e!r}") from None
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    raise Unavailable(f"cannot reach {self._host}:{self._port}: {e!r}") from None
        return _answer(status, raw, not_found, conflict)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _answer(status: int, raw: bytes, not_found: type, conflict: type = DuplicateOutcome) -> Any:
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if 200 <= status < 300:
        if payload is None:
            raise Unavailable(f"the server answered {status} without a JSON body", status)
        return payload
    message = payload.get("error") if isinstance(payload, dict) else None
    message = message or raw.decode("utf-8", "replace")[:200] or f"HTTP {status}"
    if status == 401:
        raise Unauthorized(message, status)
    if status == 404:
        raise not_found(message, status)
    if status == 409:
        raise conflict(message, status)
    if status == 413:
        raise PayloadTooLarge(message, status)
    if status == 408:
        raise Unavailable(message, status)
    if 400 <= status < 500:
        raise InvalidRequest(message, status)
    raise Unavailable(message, status)
