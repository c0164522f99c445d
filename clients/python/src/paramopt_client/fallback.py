"""Seed defaults when paramopt is unreachable.

`Fallback` (sync) and `AsyncFallback` (asyncio) wrap a client. When a
decision cannot be had (the server is down, times out or answers 5xx/429
after the client's retries) they return the module's seed defaults as a
Decision with `fallback=True`, count it, and log a warning. The defaults are
those of the last `GET /v1/modules` (fetched once a module's first decision
succeeds, kept in memory and, with `cache_path`, in a JSON file, so a process
started during an outage has them), else the ones the module gave.

After a decision fell back, the next ones fall back at once, without
trying the server, for `recheck_after` seconds (5 by default): a server that
times out would otherwise cost every decision the client's whole retry
budget. The first decision after that tries the server again.

Outcomes of fallback decisions are not sent. An outcome of a real decision
that cannot be delivered (after the retries) is logged, counted in
`undelivered` and returned as a Report with `delivered=False`, instead of
raising into the trading loop. Refusals (4xx) still raise: they are bugs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .aio import AsyncParamoptClient
from .errors import ParamoptError, Unavailable
from .sync import ParamoptClient
from .types import Decision, Health, ModuleSpec, Parameters, Report

__all__ = ["SeedDefaults", "Fallback", "AsyncFallback"]

LOG = logging.getLogger("paramopt_client")

PathLike = Union[str, "os.PathLike[str]"]


class SeedDefaults:
    """Each module's seed defaults ({"group.name": default}): learned from
    `GET /v1/modules` (and saved to `cache_path`), else `given`."""

    def __init__(self, given: Optional[Mapping[str, Mapping[str, float]]] = None, cache_path: Optional[PathLike] = None) -> None:
        self._given: Dict[str, Parameters] = {m: dict(v) for m, v in (given or {}).items()}
        self._learned: Dict[str, Parameters] = {}
        self._path = Path(cache_path).expanduser() if cache_path is not None else None
        self._lock = threading.Lock()
        if self._path is not None and self._path.exists():
            try:
                cached = json.loads(self._path.read_text())
                self._learned = {m: {k: float(v) for k, v in p.items()} for m, p in cached["modules"].items()}
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
                LOG.warning("paramopt: ignoring the seed-defaults cache %s: %r", self._path, e)

    def learn(self, modules: Sequence[ModuleSpec]) -> None:
        """Takes the defaults of `GET /v1/modules`' answer, and saves them."""
        learned = {m["module"]: {p["name"]: float(p["default"]) for p in m["parameters"]} for m in modules}
        with self._lock:
            self._learned.update(learned)
            snapshot = dict(self._learned)
        if self._path is not None:
            self._save(snapshot)

    def knows(self, module: str) -> bool:
        """Whether the server's defaults for `module` have been learned."""
        with self._lock:
            return module in self._learned

    def get(self, module: str) -> Optional[Parameters]:
        with self._lock:
            found = self._learned.get(module) or self._given.get(module)
            return dict(found) if found is not None else None

    def _save(self, modules: Dict[str, Parameters]) -> None:
        assert self._path is not None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".seed-defaults-", dir=str(self._path.parent))
            with os.fdopen(fd, "w") as f:
                json.dump({"modules": modules}, f, indent=1, sort_keys=True)
            os.replace(tmp, self._path)
        except OSError as e:
            LOG.warning("paramopt: cannot save the seed-defaults cache %s: %r", self._path, e)


class _Record:
    """What both wrappers count and log."""

    def __init__(self, defaults: SeedDefaults, logger: logging.Logger, recheck_after: float) -> None:
        self.defaults = defaults
        self.log = logger
        self.recheck_after = recheck_after
        self.fallbacks = 0
        self.by_module: Dict[str, int] = {}
        self.undelivered = 0
        self._failed_at: Optional[float] = None
        self._failure = ""
        self._lock = threading.Lock()

    def skip(self) -> Optional[Unavailable]:
        """The error to fall back on without trying, while the last failure is recent."""
        with self._lock:
            if self._failed_at is None:
                return None
            ago = time.monotonic() - self._failed_at
            if ago >= self.recheck_after:
                return None
            return Unavailable(
                f"paramopt was unreachable {ago:.1f} s ago ({self._failure}); next try in {self.recheck_after - ago:.1f} s"
            )

    def failed(self, error: Unavailable) -> None:
        with self._lock:
            self._failed_at = time.monotonic()
            self._failure = str(error)

    def recovered(self) -> None:
        with self._lock:
            was_down, self._failed_at = self._failed_at is not None, None
            count = self.fallbacks
        if was_down:
            self.log.warning("paramopt reachable again (%d fallback decisions so far)", count)

    def fall_back(
        self, module: str, session: str, regime: str, strategy: Optional[str], error: Unavailable
    ) -> Decision:
        parameters = self.defaults.get(module)
        if parameters is None:
            self.log.error("paramopt unreachable and no seed defaults known for %s: %s", module, error)
            raise error
        with self._lock:
            self.fallbacks += 1
            self.by_module[module] = self.by_module.get(module, 0) + 1
            count = self.fallbacks
        self.log.warning(
            "paramopt unreachable (%s): %s %s/%s uses its seed defaults (fallback %d)", error, module, session, regime, count
        )
        return Decision(
            decision_id=None,
            module=module,
            session=session,
            regime=regime,
            parameters=parameters,
            policy_generation=None,
            strategy=strategy,
            fallback=True,
            fallback_reason=str(error),
        )

    def lost(self, decision: Union[Decision, str], error: Unavailable) -> Report:
        decision_id = decision.decision_id if isinstance(decision, Decision) else decision
        with self._lock:
            self.undelivered += 1
        self.log.warning("paramopt: the outcome of %s was not delivered: %s", decision_id, error)
        return Report(decision_id=decision_id, sent=True, delivered=False)


class Fallback:
    """A ParamoptClient that answers with the seed defaults when paramopt is
    unreachable (module docstring). `fallbacks` counts those decisions
    (`fallbacks_by_module` per module); `recheck_after` is how long, in
    seconds, decisions fall back without trying after one failed. Use it as
    a context manager to close the client at the end."""

    def __init__(
        self,
        client: ParamoptClient,
        defaults: Optional[Mapping[str, Mapping[str, float]]] = None,
        cache_path: Optional[PathLike] = None,
        logger: Optional[logging.Logger] = None,
        recheck_after: float = 5.0,
    ) -> None:
        self.client = client
        self._record = _Record(SeedDefaults(defaults, cache_path), logger or LOG, recheck_after)

    @property
    def defaults(self) -> SeedDefaults:
        return self._record.defaults

    @property
    def fallbacks(self) -> int:
        return self._record.fallbacks

    @property
    def fallbacks_by_module(self) -> Dict[str, int]:
        return dict(self._record.by_module)

    @property
    def undelivered(self) -> int:
        return self._record.undelivered

    def refresh_defaults(self) -> bool:
        """Fetches every module's seed defaults now; False when unreachable."""
        try:
            self.defaults.learn(self.client.modules())
            return True
        except ParamoptError as e:
            self._record.log.warning("paramopt: cannot fetch the seed defaults: %s", e)
            return False

    def decide(
        self,
        module: str,
        session: str,
        regime: str,
        features: Optional[Mapping[str, float]] = None,
        explore: bool = True,
        strategy: Optional[str] = None,
    ) -> Decision:
        skip = self._record.skip()
        if skip is not None:
            return self._record.fall_back(module, session, regime, strategy, skip)
        try:
            decision = self.client.decide(module, session, regime, features, explore, strategy)
        except Unavailable as e:
            self._record.failed(e)
            return self._record.fall_back(module, session, regime, strategy, e)
        self._record.recovered()
        if not self.defaults.knows(module):
            self.refresh_defaults()
        return decision

    def report(
        self,
        decision: Union[Decision, str],
        reward: Optional[float] = None,
        traded: bool = True,
        trade: Optional[Mapping[str, Any]] = None,
    ) -> Report:
        try:
            return self.client.report(decision, reward, traded, trade)
        except Unavailable as e:
            return self._record.lost(decision, e)

    def report_skipped(
        self, decision: Union[Decision, str], confidence: Optional[float] = None, strategy: Optional[str] = None, **module_fields: Any
    ) -> Report:
        try:
            return self.client.report_skipped(decision, confidence, strategy, **module_fields)
        except Unavailable as e:
            return self._record.lost(decision, e)

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
        try:
            return self.client.report_closed(decision, return_pct, strategy, confidence, path, reward, **module_fields)
        except Unavailable as e:
            return self._record.lost(decision, e)

    def modules(self) -> List[ModuleSpec]:
        modules = self.client.modules()
        self.defaults.learn(modules)
        return modules

    def health(self) -> Health:
        return self.client.health()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Fallback":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncFallback:
    """Fallback for an AsyncParamoptClient: the same methods, as coroutines."""

    def __init__(
        self,
        client: AsyncParamoptClient,
        defaults: Optional[Mapping[str, Mapping[str, float]]] = None,
        cache_path: Optional[PathLike] = None,
        logger: Optional[logging.Logger] = None,
        recheck_after: float = 5.0,
    ) -> None:
        self.client = client
        self._record = _Record(SeedDefaults(defaults, cache_path), logger or LOG, recheck_after)

    @property
    def defaults(self) -> SeedDefaults:
        return self._record.defaults

    @property
    def fallbacks(self) -> int:
        return self._record.fallbacks

    @property
    def fallbacks_by_module(self) -> Dict[str, int]:
        return dict(self._record.by_module)

    @property
    def undelivered(self) -> int:
        return self._record.undelivered

    async def refresh_defaults(self) -> bool:
        try:
            self.defaults.learn(await self.client.modules())
            return True
        except ParamoptError as e:
            self._record.log.warning("paramopt: cannot fetch the seed defaults: %s", e)
            return False

    async def decide(
        self,
        module: str,
        session: str,
        regime: str,
        features: Optional[Mapping[str, float]] = None,
        explore: bool = True,
        strategy: Optional[str] = None,
    ) -> Decision:
        skip = self._record.skip()
        if skip is not None:
            return self._record.fall_back(module, session, regime, strategy, skip)
        try:
            decision = await self.client.decide(module, session, regime, features, explore, strategy)
        except Unavailable as e:
            self._record.failed(e)
            return self._record.fall_back(module, session, regime, strategy, e)
        self._record.recovered()
        if not self.defaults.knows(module):
            await self.refresh_defaults()
        return decision

    async def report(
        self,
        decision: Union[Decision, str],
        reward: Optional[float] = None,
        traded: bool = True,
        trade: Optional[Mapping[str, Any]] = None,
    ) -> Report:
        try:
            return await self.client.report(decision, reward, traded, trade)
        except Unavailable as e:
            return self._record.lost(decision, e)

    async def report_skipped(
        self, decision: Union[Decision, str], confidence: Optional[float] = None, strategy: Optional[str] = None, **module_fields: Any
    ) -> Report:
        try:
            return await self.client.report_skipped(decision, confidence, strategy, **module_fields)
        except Unavailable as e:
            return self._record.lost(decision, e)

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
        try:
            return await self.client.report_closed(decision, return_pct, strategy, confidence, path, reward, **module_fields)
        except Unavailable as e:
            return self._record.lost(decision, e)

    async def modules(self) -> List[ModuleSpec]:
        modules = await self.client.modules()
        self.defaults.learn(modules)
        return modules

    async def health(self) -> Health:
        return await self.client.health()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> "AsyncFallback":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
