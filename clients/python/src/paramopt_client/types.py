"""What the clients return: decisions, delivered reports, and the shapes of
the other answers (API.md). Answers may grow fields; the typed ones name
those a module relies on, and `raw` keeps everything the server sent."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from typing import Literal, TypedDict

__all__ = [
    "Decision",
    "Report",
    "RetryPolicy",
    "Context",
    "ParametersAnswer",
    "ParameterSpec",
    "ModuleSpec",
    "Health",
    "Parameters",
    "Session",
    "Regime",
]

Session = Literal["asia_prime", "europe_prime", "us_prime"]
Regime = Literal["bullish", "bearish", "sideways", "volatile"]
SESSIONS = ("asia_prime", "europe_prime", "us_prime")
REGIMES = ("bullish", "bearish", "sideways", "volatile")

#: {"<group>.<name>": value} for every parameter of a module.
Parameters = Dict[str, float]


class Context(TypedDict):
    session: str
    regime: str


class ParametersAnswer(TypedDict):
    """`GET /v1/parameters/{module}`: the greedy values."""

    module: str
    context: Context
    parameters: Parameters
    policy_generation: int


class ParameterSpec(TypedDict, total=False):
    name: str
    group: str
    short_name: str
    default: float
    range: List[float]
    lo: float
    hi: float
    kind: str
    arms: List[float]
    max_change_rate: float
    simplex: Optional[str]


class ModuleSpec(TypedDict, total=False):
    """One entry of `GET /v1/modules`."""

    module: str
    features: List[Dict[str, Any]]
    simplex_groups: List[Dict[str, Any]]
    parameters: List[ParameterSpec]


class Health(TypedDict, total=False):
    status: str
    store: str
    store_healthy: bool


@dataclass(frozen=True)
class Decision:
    """The parameters for one trade.

    `fallback` is True when paramopt could not be reached and these are the
    module's seed defaults (then `decision_id` and `policy_generation` are
    None, and reporting its outcome sends nothing). `raw` is the server's
    whole answer (arms, propensities, `ab_test`, `ignored_features`, ...).
    """

    decision_id: Optional[str]
    module: str
    session: str
    regime: str
    parameters: Parameters
    policy_generation: Optional[int]
    strategy: Optional[str] = None
    explore: bool = True
    fallback: bool = False
    #: Why it fell back (the error), when `fallback`.
    fallback_reason: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, name: str) -> float:
        """`decision["group.name"]`: one parameter's value."""
        return self.parameters[name]

    @classmethod
    def from_answer(cls, answer: Dict[str, Any], strategy: Optional[str] = None) -> "Decision":
        context = answer.get("context") or {}
        return cls(
            decision_id=answer["decision_id"],
            module=answer["module"],
            session=context.get("session", ""),
            regime=context.get("regime", ""),
            parameters=dict(answer["parameters"]),
            policy_generation=answer.get("policy_generation"),
            strategy=answer.get("strategy", strategy),
            explore=bool(answer.get("explore", True)),
            raw=answer,
        )


@dataclass(frozen=True)
class Report:
    """What became of one outcome.

    `delivered`: the server has it (a 200, or a 409 on a retry, which means
    an earlier attempt landed: then `duplicate` is True and `reward` None).
    `sent` is False, and nothing was sent, for a fallback decision's outcome.
    """

    decision_id: Optional[str]
    sent: bool
    delivered: bool
    reward: Optional[float] = None
    attempts: int = 0
    duplicate: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def accepted(self) -> bool:
        return self.delivered


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter.

    `attempts` counts the first try. Connection errors, timeouts, 5xx, 408
    and 429 are retried on calls that are safe to repeat (reads, decisions,
    outcomes: a repeated outcome answers 409, which counts as delivered);
    calls that change state (checkpoints, rollback, A/B tests) are retried
    only when the request cannot have reached the server (connection
    refused, 429). A 429's or 503's `Retry-After` (seconds) is honoured, up
    to `max_delay`.
    """

    attempts: int = 4
    backoff: float = 0.05
    factor: float = 2.0
    max_delay: float = 2.0
    jitter: float = 0.2

    def delay(self, retry: int, retry_after: Optional[float] = None, rng: Optional[random.Random] = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        base = min(self.backoff * self.factor ** (retry - 1), self.max_delay)
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, base * (1.0 + spread))


NO_RETRY = RetryPolicy(attempts=1)

GenerationTarget = Union[int, str]
