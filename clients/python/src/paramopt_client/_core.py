"""What the sync and asyncio clients share: each API call as a `Plan` (the
HTTP request and how to read its answer), the retry rules, and the
trade-record helpers. No IO here: the clients only move bytes."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from .errors import AbTestRunning, Conflict, DuplicateOutcome, InvalidRequest, NotFound, ParamoptError, Unavailable, UnknownDecision, error_for
from .types import Decision, GenerationTarget, Health, ModuleSpec, ParametersAnswer, Report, RetryPolicy

T = TypeVar("T")

#: Retry classes (RetryPolicy's docstring): reads and decisions, outcomes
#: (where a 409 on a retry means delivered), and calls that change state.
SAFE, OUTCOME, UNSAFE = "safe", "outcome", "unsafe"


@dataclass(frozen=True)
class Endpoint:
    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> "Endpoint":
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        https = url.scheme == "https"
        return cls(https, url.hostname or "127.0.0.1", url.port or (443 if https else 80), url.path.rstrip("/"))

    @property
    def authority(self) -> str:
        default = 443 if self.https else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def headers(token: Optional[str], user_agent: str) -> Dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": user_agent}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Optional[bytes]
    kind: str = SAFE
    not_found: Type[ParamoptError] = NotFound
    conflict: Type[ParamoptError] = Conflict


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    #: The transport sent the request a second time on a fresh connection
    #: (the kept-alive one had been closed under it).
    resent: bool = False


class TransportError(Exception):
    """The exchange failed. `sent`: the request may have reached the server."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class Answer:
    payload: Any
    attempts: int
    #: A 409 on a retried outcome: an earlier attempt landed.
    duplicate: bool = False


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class Plan(Generic[T]):
    """One API call: `call` to send (None: nothing to send), and `convert`
    to make the result from its answer (None when nothing was sent)."""

    call: Optional[Call]
    convert: Callable[[Optional[Answer]], T] = field(repr=False)


def encode(body: Any) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON; refuse them here rather
    # than send something the server must reject.
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as e:
        raise InvalidRequest(f"not sendable as JSON: {e}") from None


def next_step(call: Call, attempt: int, policy: RetryPolicy, result: Union[Response, TransportError]) -> Union[Retry, Answer]:
    """After attempt number `attempt` (1 for the first): retry after a
    delay, or the answer. Raises the call's error."""
    last = attempt >= max(1, policy.attempts)
    if isinstance(result, TransportError):
        if not last and (call.kind != UNSAFE or not result.sent):
            return Retry(policy.delay(attempt))
        raise Unavailable(str(result)) from None
    status = result.status
    if status in (408, 429) or status >= 500:
        if not last and (call.kind != UNSAFE or status == 429):
            return Retry(policy.delay(attempt, _retry_after(result)))
    payload = _payload(result.body)
    retried = attempt > 1 or result.resent
    if status == 409 and call.kind == OUTCOME and retried:
        return Answer(payload if isinstance(payload, dict) else {}, attempt, duplicate=True)
    if 200 <= status < 300:
        if payload is None:
            raise Unavailable(f"the server answered {status} without a JSON body", status)
        return Answer(payload, attempt)
    message = payload.get("error") if isinstance(payload, dict) else None
    message = message or result.body.decode("utf-8", "replace")[:200] or f"HTTP {status}"
    raise error_for(status, message, call.not_found, call.conflict)


def _payload(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _retry_after(response: Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use the backoff


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _payload_of(answer: Optional[Answer]) -> Any:
    assert answer is not None
    return answer.payload


def _key(key: str) -> Callable[[Optional[Answer]], Any]:
    return lambda answer: _payload_of(answer)[key]


# ---------------------------------------------------------------- the calls


def decide(
    module: str,
    session: str,
    regime: str,
    features: Optional[Mapping[str, float]],
    explore: bool,
    strategy: Optional[str],
) -> Plan[Decision]:
    body: Dict[str, Any] = {"module": module, "context": {"session": session, "regime": regime}, "explore": explore}
    if features:
        body["features"] = dict(features)
    if strategy is not None:
        body["strategy"] = strategy
    return Plan(
        Call("POST", "/v1/decisions", encode(body)),
        lambda answer: Decision.from_answer(_payload_of(answer), strategy),
    )


def report(
    decision: Union[Decision, str],
    reward: Optional[float],
    traded: bool,
    trade: Optional[Mapping[str, Any]],
) -> Plan[Report]:
    if isinstance(decision, Decision) and decision.fallback:
        # Seed defaults served while paramopt was unreachable: the server
        # has no such decision, so there is nothing to send.
        return Plan(None, lambda _: Report(decision_id=None, sent=False, delivered=False))
    decision_id = decision.decision_id if isinstance(decision, Decision) else decision
    if not decision_id:
        raise ValueError("report needs a decision or its decision_id")
    body: Dict[str, Any] = {"decision_id": decision_id, "traded": traded}
    if reward is not None:
        body["reward"] = reward
    if trade is not None:
        body["trade"] = dict(trade)

    def convert(answer: Optional[Answer]) -> Report:
        assert answer is not None
        payload = answer.payload
        return Report(
            decision_id=decision_id,
            sent=True,
            delivered=bool(payload.get("accepted", True)),
            reward=None if answer.duplicate else payload.get("reward"),
            attempts=answer.attempts,
            duplicate=answer.duplicate,
            raw=payload,
        )

    call = Call("POST", "/v1/outcomes", encode(body), OUTCOME, UnknownDecision, DuplicateOutcome)
    return Plan(call, convert)


def skipped_trade(
    decision: Union[Decision, str],
    confidence: Optional[float],
    strategy: Optional[str],
    module_fields: Mapping[str, Any],
) -> Dict[str, Any]:
    """The trade record of a skipped trade: return 0, the module's
    confidence (the threshold caused the skip) and its strategy."""
    trade: Dict[str, Any] = dict(module_fields)
    trade["return_pct"] = 0.0
    _put_common(trade, decision, confidence, strategy)
    return trade


def closed_trade(
    decision: Union[Decision, str],
    return_pct: float,
    strategy: Optional[str],
    confidence: Optional[float],
    path: Optional[Sequence[float]],
    module_fields: Mapping[str, Any],
) -> Dict[str, Any]:
    """The trade record of a closed trade. `path` (the position's return at
    each check) goes to `exit_analysis.path`, beside any `exit_analysis`
    given; every other keyword is the module's own field, at the trade's top
    level."""
    trade: Dict[str, Any] = dict(module_fields)
    trade["return_pct"] = float(return_pct)
    _put_common(trade, decision, confidence, strategy)
    if path is not None:
        exit_analysis = dict(trade.get("exit_analysis") or {})
        exit_analysis["path"] = [float(r) for r in path]
        trade["exit_analysis"] = exit_analysis
    return trade


def _put_common(trade: Dict[str, Any], decision: Union[Decision, str], confidence: Optional[float], strategy: Optional[str]) -> None:
    if strategy is None and isinstance(decision, Decision):
        strategy = decision.strategy
    if strategy is not None:
        trade["strategy"] = strategy
    if confidence is not None:
        trade["confidence"] = float(confidence)


def parameters(module: str, session: str, regime: str) -> Plan[ParametersAnswer]:
    query = urllib.parse.urlencode({"session": session, "regime": regime})
    return Plan(Call("GET", f"/v1/parameters/{_seg(module)}?{query}", None), _payload_of)


def modules() -> Plan[List[ModuleSpec]]:
    return Plan(Call("GET", "/v1/modules", None), _key("modules"))


def checkpoints(module: str) -> Plan[List[Dict[str, Any]]]:
    query = urllib.parse.urlencode({"module": module})
    return Plan(Call("GET", f"/v1/checkpoints?{query}", None), _key("checkpoints"))


def checkpoint(module: str, generation: int) -> Plan[Dict[str, Any]]:
    return Plan(Call("GET", f"/v1/checkpoints/{_seg(module)}/{int(generation)}", None), _payload_of)


def create_checkpoint(module: str) -> Plan[Dict[str, Any]]:
    return Plan(Call("POST", f"/v1/checkpoints/{_seg(module)}", encode({}), UNSAFE), _payload_of)


def rollback(module: str, to: GenerationTarget) -> Plan[Dict[str, Any]]:
    return Plan(Call("POST", "/v1/rollback", encode({"module": module, "to": to}), UNSAFE), _payload_of)


def start_ab_test(module: str, challenger: Union[int, str, Mapping[str, float]], settings: Mapping[str, Any]) -> Plan[Dict[str, Any]]:
    chosen: Any = {"parameters": dict(challenger)} if isinstance(challenger, Mapping) else challenger
    body = {"module": module, "challenger": chosen, **settings}
    call = Call("POST", "/v1/ab-tests", encode(body), UNSAFE, conflict=AbTestRunning)
    return Plan(call, _key("ab_test"))


def ab_test(module: str) -> Plan[Dict[str, Any]]:
    return Plan(Call("GET", f"/v1/ab-tests/{_seg(module)}", None), _payload_of)


def stop_ab_test(module: str) -> Plan[Dict[str, Any]]:
    return Plan(Call("DELETE", f"/v1/ab-tests/{_seg(module)}", None, UNSAFE), _key("stopped"))


def health() -> Plan[Health]:
    return Plan(Call("GET", "/healthz", None), _payload_of)
