"""The asyncio client against a real `paramopt serve` (support.py): the same
calls as the sync client, concurrent calls over its connection pool, and the
same retry rules."""

from __future__ import annotations

import asyncio
import time
import unittest

from paramopt_client import (
    AsyncParamoptClient,
    Decision,
    DuplicateOutcome,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    UnknownDecision,
)

from support import FaultProxy, Target, reward_scale, unknown_field_refused

FAST = RetryPolicy(attempts=3, backoff=0.01, jitter=0.0)


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    target: Target

    @classmethod
    def setUpClass(cls) -> None:
        cls.target = Target.get()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.target.close()

    async def asyncSetUp(self) -> None:
        self.client = AsyncParamoptClient(self.target.url, token=self.target.token, retry=FAST)

    async def asyncTearDown(self) -> None:
        await self.client.aclose()

    async def test_decide_and_report_once(self) -> None:
        d = await self.client.decide("crypto", "us_prime", "bullish", features={"volatility_score": 0.4})
        self.assertIsInstance(d, Decision)
        self.assertFalse(d.fallback)
        self.assertEqual(len(d.decision_id or ""), 32)
        modules = {m["module"]: m for m in await self.client.modules()}
        self.assertEqual(set(d.parameters), {p["name"] for p in modules["crypto"]["parameters"]})
        r = await self.client.report(d, reward=0.004)
        self.assertTrue(r.delivered)
        self.assertEqual(r.attempts, 1)
        self.assertAlmostEqual(r.reward or 0.0, 0.004)
        with self.assertRaises(DuplicateOutcome):
            await self.client.report(d, reward=0.004)

    async def test_report_closed_and_report_skipped_reach_the_store(self) -> None:
        closed = await self.client.decide("options", "europe_prime", "bearish")
        path = [0.01, 0.03, -0.02]
        r = await self.client.report_closed(closed, return_pct=-0.02, strategy="long_puts", confidence=0.77, path=path,
                                            symbol="SPY", side="BUY", exit_reason="stop_loss")
        self.assertTrue(r.delivered)
        self.assertAlmostEqual(r.reward or 0.0, reward_scale("options") * -0.02)
        skipped = await self.client.decide("options", "europe_prime", "bearish")
        s = await self.client.report_skipped(skipped, confidence=0.2, strategy="long_puts")
        self.assertEqual(s.reward, 0.0)
        row = await asyncio.to_thread(self.target.stored_trade, "options", closed.decision_id or "")
        self.assertEqual((row["strategy"], row["exit_reason"], row["symbol"]), ("long_puts", "stop_loss", "SPY"))
        self.assertAlmostEqual(row["confidence"], 0.77)
        self.assertEqual(row["exit_analysis"]["path"], path)
        row = await asyncio.to_thread(self.target.stored_trade, "options", skipped.decision_id or "")
        self.assertEqual((row["strategy"], row["confidence"], row["return_pct"]), ("long_puts", 0.2, 0.0))

    async def test_module_fields_and_a_decisions_strategy(self) -> None:
        try:
            d = await self.client.decide("stocks", "asia_prime", "volatile", strategy="leveraged_etfs")
        except InvalidRequest as e:
            if unknown_field_refused(e, "strategy"):
                self.skipTest(f"this server refuses a decision's strategy (issue 18, the lead's server side): {e}")
            raise
        self.assertEqual(d.strategy, "leveraged_etfs")
        try:
            await self.client.report_closed(d, return_pct=0.01, confidence=0.66, regime_score=0.3)
        except InvalidRequest as e:
            if unknown_field_refused(e, "regime_score"):
                self.skipTest(f"this server refuses unknown trade fields (issue 18, being changed): {e}")
            raise
        row = await asyncio.to_thread(self.target.stored_trade, "stocks", d.decision_id or "")
        self.assertEqual(row["strategy"], "leveraged_etfs")
        self.assertEqual(row.get("regime_score"), 0.3, row)

    async def test_reads_checkpoints_and_health(self) -> None:
        health = await self.client.health()
        self.assertEqual(health["status"], "ok")
        greedy = await self.client.parameters("crypto", "asia_prime", "volatile")
        d = await self.client.decide("crypto", "asia_prime", "volatile", explore=False)
        self.assertEqual(d.parameters, greedy["parameters"])
        await self.client.report(d, reward=0.001)
        made = await self.client.create_checkpoint("crypto")
        listed = await self.client.checkpoints("crypto")
        self.assertEqual(listed[0]["generation"], made["generation"])
        self.assertIn("stats", await self.client.checkpoint("crypto", made["generation"]))
        running = await self.client.ab_test("crypto")
        self.assertIsNone(running["running"])

    async def test_errors_are_typed(self) -> None:
        with self.assertRaises(InvalidRequest) as e:
            await self.client.decide("crypto", "asia_prime", "sunny")
        self.assertIn("sunny", e.exception.message)
        with self.assertRaises(UnknownDecision):
            await self.client.report("f" * 32, reward=0.0)
        with self.assertRaises(NotFound):
            await self.client.checkpoint("stocks", 12345)
        if self.target.token:
            async with AsyncParamoptClient(self.target.url, token="wrong") as bad:
                with self.assertRaises(Unauthorized):
                    await bad.modules()

    async def test_concurrent_calls_share_a_few_kept_alive_connections(self) -> None:
        before = self.target.metric("paramopt_connections_accepted_total")
        async with AsyncParamoptClient(self.target.url, token=self.target.token, max_connections=4) as client:

            async def one(i: int) -> float:
                d = await client.decide("stocks", ("asia_prime", "europe_prime", "us_prime")[i % 3], "bullish")
                r = await client.report(d, reward=0.001 * (i % 5))
                self.assertTrue(r.delivered)
                return r.reward or 0.0

            for _ in range(3):
                rewards = await asyncio.gather(*(one(i) for i in range(40)))
                self.assertEqual(len(rewards), 40)
        opened = self.target.metric("paramopt_connections_accepted_total") - before
        self.assertGreaterEqual(opened, 2, "calls ran concurrently")
        self.assertLessEqual(opened, 4 + 1, "at most max_connections, and one for this scrape")

    async def test_an_unreachable_server_is_unavailable_after_the_retries(self) -> None:
        policy = RetryPolicy(attempts=3, backoff=0.05, factor=2.0, jitter=0.0)
        async with AsyncParamoptClient("http://127.0.0.1:9", timeout=1, retry=policy) as dead:
            started = time.monotonic()
            with self.assertRaises(Unavailable) as e:
                await dead.decide("crypto", "asia_prime", "bullish")
            waited = time.monotonic() - started
        self.assertIsNone(e.exception.status)
        self.assertGreaterEqual(waited, 0.05 + 0.10, "two backoffs between three attempts")


class AsyncRetryTest(unittest.IsolatedAsyncioTestCase):
    target: Target
    proxy: FaultProxy

    @classmethod
    def setUpClass(cls) -> None:
        cls.target = Target.get()
        cls.proxy = FaultProxy(cls.target.url)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.proxy.close()
        cls.target.close()

    async def asyncSetUp(self) -> None:
        self.client = AsyncParamoptClient(self.proxy.url, token=self.target.token, retry=FAST)

    async def asyncTearDown(self) -> None:
        await self.client.aclose()

    async def test_an_outcome_whose_answer_was_lost_gets_409_on_the_retry_and_counts_as_delivered(self) -> None:
        before = self.target.metric('paramopt_outcomes_total{module="stocks"}')
        d = await self.client.decide("stocks", "us_prime", "sideways")
        sent = self.proxy.count("POST", "/v1/outcomes")
        self.proxy.plan("POST", "/v1/outcomes", ["lose"])
        r = await self.client.report_skipped(d, confidence=0.3)
        self.assertTrue(r.delivered and r.duplicate, r)
        self.assertEqual(self.proxy.count("POST", "/v1/outcomes") - sent, 2)
        self.assertEqual(self.target.metric('paramopt_outcomes_total{module="stocks"}') - before, 1)
        with self.assertRaises(DuplicateOutcome):
            await self.client.report(d, reward=0.0)

    async def test_5xx_and_429_are_retried(self) -> None:
        d = await self.client.decide("crypto", "europe_prime", "bullish")
        self.proxy.plan("POST", "/v1/outcomes", [502, 429])
        r = await self.client.report(d, reward=-0.003)
        self.assertEqual((r.delivered, r.duplicate, r.attempts), (True, False, 3))
        self.assertAlmostEqual(r.reward or 0.0, -0.003)

    async def test_a_call_that_changes_state_is_not_repeated_after_a_5xx(self) -> None:
        before = self.proxy.count("POST", "/v1/checkpoints/")
        self.proxy.plan("POST", "/v1/checkpoints/", [500])
        with self.assertRaises(Unavailable) as e:
            await self.client.create_checkpoint("crypto")
        self.assertEqual(e.exception.status, 500)
        self.assertEqual(self.proxy.count("POST", "/v1/checkpoints/") - before, 1)


if __name__ == "__main__":
    unittest.main()
