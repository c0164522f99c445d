"""The exceptions every call raises, and which one an HTTP status is."""

from __future__ import annotations

from typing import Optional, Type

__all__ = [
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
    "error_for",
]


class ParamoptError(Exception):
    """Any refusal or failure. `status` is the HTTP status (None when the
    server could not be reached); `message` is the server's `error` text,
    which names the bad value."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status


class InvalidRequest(ParamoptError):
    """400 or 422 (and any other 4xx without a class of its own): unknown
    module, context value or feature, non-finite numbers, no reward and no
    `trade.return_pct`, ..."""


class PayloadTooLarge(InvalidRequest):
    """413: the request body is over the server's limit."""


class Unauthorized(ParamoptError):
    """401: missing or wrong bearer token."""


class NotFound(ParamoptError):
    """404: no such route, module, checkpoint or A/B test."""


class UnknownDecision(NotFound):
    """404 on an outcome: the decision_id is unknown or has expired."""


class Conflict(ParamoptError):
    """409: the request clashes with the server's state."""


class AbTestRunning(Conflict):
    """409: an A/B test is already running on the module."""


class DuplicateOutcome(Conflict):
    """409 on a first attempt: an outcome is already recorded for this
    decision. (A 409 on a retry is not raised: the earlier attempt landed,
    and the report counts as delivered.)"""


class Unavailable(ParamoptError):
    """5xx, 408, 429 after the retries, or the server cannot be reached
    (`status` None)."""


def error_for(
    status: int,
    message: str,
    not_found: Type[ParamoptError] = NotFound,
    conflict: Type[ParamoptError] = Conflict,
) -> ParamoptError:
    """The exception for a non-2xx answer."""
    if status == 401:
        return Unauthorized(message, status)
    if status == 404:
        return not_found(message, status)
    if status == 409:
        return conflict(message, status)
    if status == 413:
        return PayloadTooLarge(message, status)
    if status in (408, 429) or status >= 500:
        return Unavailable(message, status)
    return InvalidRequest(message, status)
