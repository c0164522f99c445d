"""The seed-defaults fallback: a server of its own per test, stopped and
started again (support.Server)."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import unittest
from pathlib import Path
from typing import Dict

from paramopt_client import (
    AsyncFallback,
    AsyncParamoptClient,
    Fallback,
    ParamoptClient,
    RetryPolicy,
    Unavailable,
)

from support import Server

FAST = RetryPolicy(attempts=2, backoff=0.01, jitter=0.0)


def seed_defaults(client: ParamoptClient, module: str) -> Dict[str, float]:
    spaces = {m["module"]: m for m in client.modules()}
    return {p["name"]: p["default"] for p in spaces[module]["parameters"]}


class SyncFallbackTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Server()
        self.addCleanup(self.server.close)
        tmp = tempfile.TemporaryDirectory(prefix="paramopt-fallback-")
        self.addCleanup(tmp.cleanup)
        self.cache = Path(tmp.name) / "cache" / "seed-defaults.json"
        self.direct = ParamoptClient(self.server.url)
        self.addCleanup(self.direct.close)

    def test_the_seed_defaults_stand_in_while_the_server_is_stopped(self) -> None:
        defaults = seed_defaults(self.direct, "crypto")
        pm = Fallback(ParamoptClient(self.server.url, timeout=2, retry=FAST), cache_path=self.cache, recheck_after=0.3)
        with pm:
            live = pm.decide("crypto", "asia_prime", "bullish", features={"momentum_score": 0.5})
            self.assertFalse(live.fallback)
            self.assertTrue(pm.report_closed(live, return_pct=0.01, confidence=0.7).delivered)
            # Learned from GET /v1/modules after the first decision, and saved.
            self.assertEqual(json.loads(self.cache.read_text())["modules"]["crypto"], defaults)
            open_trade = pm.decide("crypto", "europe_prime", "bullish")

            self.assertEqual(self.server.stop(), 0)
            with self.assertLogs("paramopt_client", "WARNING") as logs:
                d = pm.decide("crypto", "us_prime", "bearish", strategy="momentum")
            self.assertTrue(d.fallback)
            self.assertIsNone(d.decision_id)
            self.assertIsNone(d.policy_generation)
            self.assertEqual(d.parameters, defaults)
            self.assertEqual((d.module, d.session, d.regime, d.strategy), ("crypto", "us_prime", "bearish", "momentum"))
            self.assertIn("cannot reach", d.fallback_reason or "")
            self.assertEqual(pm.fallbacks, 1)
            self.assertEqual(pm.fallbacks_by_module, {"crypto": 1})
            self.assertTrue(any("seed defaults" in line and "fallback 1" in line for line in logs.output), logs.output)
            # Within recheck_after of that failure, the next decision does not try.
            with self.assertLogs("paramopt_client", "WARNING"):
                quick = pm.decide("crypto", "us_prime", "bearish")
            self.assertTrue(quick.fallback)
            self.assertIn("next try in", quick.fallback_reason or "")
            self.assertEqual(pm.fallbacks, 2)
            self.assertEqual(pm.fallbacks_by_module, {"crypto": 2})

            # Its outcome is not sent.
            skipped = pm.report_skipped(d, confidence=0.2)
            closed = pm.report_closed(d, return_pct=0.03, path=[0.01, 0.03])
            for r in (skipped, closed):
                self.assertFalse(r.sent or r.delivered, r)
            self.assertEqual(pm.undelivered, 0)
            # A real decision's outcome cannot be delivered now: counted, not raised.
            with self.assertLogs("paramopt_client", "WARNING"):
                lost = pm.report(open_trade, reward=0.01)
            self.assertTrue(lost.sent)
            self.assertFalse(lost.delivered)
            self.assertEqual(pm.undelivered, 1)

            # Back up on the same port and store: real decisions again, once
            # recheck_after has passed.
            self.server.start()
            time.sleep(0.3)
            with self.assertLogs("paramopt_client", "WARNING") as logs:
                again = pm.decide("crypto", "us_prime", "bearish")
            self.assertFalse(again.fallback)
            self.assertEqual(len(again.decision_id or ""), 32)
            self.assertIn("reachable again", logs.output[0])
            self.assertEqual(pm.fallbacks, 2)
            outcomes = self.direct.checkpoints("crypto")
            # The final checkpoint at the stop held the one delivered outcome.
            self.assertEqual(outcomes[0]["outcomes"], 1)

    def test_a_plain_client_sends_nothing_for_a_fallback_decision(self) -> None:
        with Fallback(ParamoptClient("http://127.0.0.1:9", retry=FAST), defaults={"stocks": {"x.y": 1.0}}) as pm:
            with self.assertLogs("paramopt_client", "WARNING"):
                d = pm.decide("stocks", "asia_prime", "bullish")
        self.assertTrue(d.fallback)
        # Even through a client whose server is up: there is no such decision to report.
        r = self.direct.report_closed(d, return_pct=0.02)
        self.assertEqual((r.sent, r.delivered, r.attempts), (False, False, 0))

    def test_a_process_started_during_an_outage_uses_the_cached_defaults(self) -> None:
        defaults = seed_defaults(self.direct, "options")
        with Fallback(ParamoptClient(self.server.url, retry=FAST), cache_path=self.cache) as first:
            self.assertTrue(first.refresh_defaults())
        self.assertEqual(self.server.stop(), 0)
        with Fallback(ParamoptClient(self.server.url, retry=FAST), cache_path=self.cache) as later:
            with self.assertLogs("paramopt_client", "WARNING") as logs:
                self.assertFalse(later.refresh_defaults())
                d = later.decide("options", "asia_prime", "volatile")
            self.assertEqual(len(logs.output), 2, logs.output)
        self.assertTrue(d.fallback)
        self.assertEqual(d.parameters, defaults)
        self.assertEqual(later.fallbacks, 1)

    def test_defaults_given_by_the_module_and_none_at_all(self) -> None:
        given = {"crypto": {"session_confidence.asia_prime": 0.61}}
        with Fallback(ParamoptClient("http://127.0.0.1:9", retry=FAST), defaults=given) as pm:
            with self.assertLogs("paramopt_client", "WARNING"):
                d = pm.decide("crypto", "asia_prime", "bullish")
            self.assertTrue(d.fallback)
            self.assertEqual(d.parameters, given["crypto"])
            with self.assertLogs("paramopt_client", "ERROR"):
                with self.assertRaises(Unavailable):
                    pm.decide("stocks", "asia_prime", "bullish")
            self.assertEqual(pm.fallbacks_by_module, {"crypto": 1})


class AsyncFallbackTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self) -> None:
        self.server = Server()
        self.addCleanup(self.server.close)

    async def test_the_seed_defaults_stand_in_while_the_server_is_stopped(self) -> None:
        async with AsyncFallback(AsyncParamoptClient(self.server.url, timeout=2, retry=FAST), recheck_after=0.3) as pm:
            spaces = {m["module"]: m for m in await pm.modules()}
            defaults = {p["name"]: p["default"] for p in spaces["stocks"]["parameters"]}
            live = await pm.decide("stocks", "us_prime", "bullish")
            self.assertFalse(live.fallback)
            self.assertTrue((await pm.report_closed(live, return_pct=0.004, confidence=0.9)).delivered)

            self.assertEqual(await asyncio.to_thread(self.server.stop), 0)
            with self.assertLogs("paramopt_client", "WARNING") as logs:
                decisions = await asyncio.gather(*(pm.decide("stocks", "us_prime", "bullish") for _ in range(3)))
            self.assertTrue(all(d.fallback and d.parameters == defaults for d in decisions))
            self.assertEqual(pm.fallbacks, 3)
            self.assertEqual(len([line for line in logs.output if "seed defaults" in line]), 3)
            r = await pm.report_skipped(decisions[0], confidence=0.1)
            self.assertFalse(r.sent)

            await asyncio.to_thread(self.server.start)
            await asyncio.sleep(0.3)
            with self.assertLogs("paramopt_client", "WARNING") as logs:
                again = await pm.decide("stocks", "us_prime", "bullish")
            self.assertFalse(again.fallback)
            self.assertIn("reachable again (3 fallback decisions so far)", logs.output[0])
            self.assertTrue((await pm.report(again, reward=0.0)).delivered)


if __name__ == "__main__":
    unittest.main()
