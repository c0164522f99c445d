"""Clients for the paramopt HTTP API (/v1), standard library only.

A trading module asks for its parameters before a trade and reports the
outcome when the trade closes::

    from paramopt_client import Fallback, ParamoptClient

    with Fallback(ParamoptClient("http://127.0.0.1:8700"), cache_path="paramopt-defaults.json") as pm:
        d = pm.decide("crypto", "asia_prime", "bullish", features={"momentum_score": 0.72})
        threshold = d["session_confidence.asia_prime"]
        ...
        pm.report_closed(d, return_pct=0.0123, confidence=0.81, path=[0.002, -0.001, 0.0123])

`ParamoptClient` blocks; `AsyncParamoptClient` has the same methods as
coroutines. `Fallback`/`AsyncFallback` serve the seed defaults when paramopt
is unreachable.
"""

from .aio import AsyncParamoptClient
from .errors import (
    AbTestRunning,
    Conflict,
    DuplicateOutcome,
    InvalidRequest,
    NotFound,
    ParamoptError,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnknownDecision,
)
from .fallback import AsyncFallback, Fallback, SeedDefaults
from .sync import ParamoptClient
from .types import Decision, Report, RetryPolicy
from .version import API_VERSION, __version__

__all__ = [
    "API_VERSION",
    "__version__",
    "ParamoptClient",
    "AsyncParamoptClient",
    "Fallback",
    "AsyncFallback",
    "SeedDefaults",
    "Decision",
    "Report",
    "RetryPolicy",
    "ParamoptError",
    "InvalidRequest",
    "PayloadTooLarge",
    "Unauthorized",
    "NotFound",
    "UnknownDecision",
    "Conflict",
    "AbTestRunning",
    "DuplicateOutcome",
    "Unavailable",
]
