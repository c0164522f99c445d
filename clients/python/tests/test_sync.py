"""The sync client against a real `paramopt serve` (support.py)."""

from __future__ import annotations

import importlib.metadata
import sys
import time
import unittest

import paramopt_client
from paramopt_client import (
    AbTestRunning,
    Decision,
    DuplicateOutcome,
    InvalidRequest,
    NotFound,
    ParamoptClient,
    ParamoptError,
    PayloadTooLarge,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    UnknownDecision,
)

from support import FaultProxy, Target, reward_scale, unknown_field_refused

FAST = RetryPolicy(attempts=3, backoff=0.01, jitter=0.0)


class SyncClientTest(unittest.TestCase):
    target: Target
    client: ParamoptClient

    @classmethod
    def setUpClass(cls) -> None:
        cls.target = Target.get()
        cls.client = ParamoptClient(cls.target.url, token=cls.target.token, retry=FAST)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.target.close()

    def test_the_installed_version_follows_the_api_version(self) -> None:
        try:
            installed = importlib.metadata.version("paramopt-client")
        except importlib.metadata.PackageNotFoundError:
            self.skipTest("paramopt-client is not installed (pip install ./clients/python)")
        self.assertEqual(installed, paramopt_client.__version__)
        self.assertEqual(paramopt_client.API_VERSION, "v1")
        self.assertEqual(installed.split(".")[0], "1", "1.x speaks /v1")

    def test_modules_list_the_three_spaces_with_their_defaults(self) -> None:
        modules = {m["module"]: m for m in self.client.modules()}
        self.assertEqual(sorted(modules), ["crypto", "options", "stocks"])
        for p in modules["crypto"]["parameters"]:
            for field in ("name", "group", "default", "range", "kind", "arms"):
                self.assertIn(field, p)
            self.assertLessEqual(p["range"][0], p["default"])
            self.assertLessEqual(p["default"], p["range"][1])

    def test_decide_returns_every_parameter_and_an_outcome_is_accepted_once(self) -> None:
        space = {m["module"]: m for m in self.client.modules()}["crypto"]
        d = self.client.decide("crypto", "asia_prime", "bullish", features={"momentum_score": 0.72})
        self.assertIsInstance(d, Decision)
        self.assertFalse(d.fallback)
        self.assertEqual(len(d.decision_id or ""), 32)
        self.assertEqual((d.module, d.session, d.regime), ("crypto", "asia_prime", "bullish"))
        self.assertEqual(set(d.parameters), {p["name"] for p in space["parameters"]})
        for p in space["parameters"]:
            self.assertGreaterEqual(d[p["name"]], p["range"][0])
            self.assertLessEqual(d[p["name"]], p["range"][1])
        self.assertIsInstance(d.policy_generation, int)
        self.assertIn("propensities", d.raw)
        ok = self.client.report(d, reward=0.0123)
        self.assertTrue(ok.delivered and ok.sent and ok.accepted)
        self.assertFalse(ok.duplicate)
        self.assertEqual(ok.attempts, 1)
        self.assertAlmostEqual(ok.reward or 0.0, 0.0123)
        # A second report of the same decision, not a retry: refused.
        with self.assertRaises(DuplicateOutcome) as e:
            self.client.report(d.decision_id or "", reward=0.0123)
        self.assertEqual(e.exception.status, 409)
        self.assertIn(d.decision_id or "", e.exception.message)

    def test_report_closed_sends_the_trade_the_credit_issue_needs(self) -> None:
        d = self.client.decide("stocks", "us_prime", "volatile", features={"technical_confidence": 0.8})
        path = [0.004, -0.003, 0.011, 0.02]
        r = self.client.report_closed(
            d, return_pct=0.02, strategy="breakout", confidence=0.83, path=path,
            symbol="TQQQ", side="BUY", quantity=10, price=45.5, profit_loss=9.1, exit_reason="intelligent_exit",
            exit_analysis={"hold_duration_hours": 4.2},
        )
        self.assertTrue(r.delivered)
        self.assertAlmostEqual(r.reward or 0.0, reward_scale("stocks") * 0.02)
        row = self.target.stored_trade("stocks", d.decision_id or "")
        self.assertEqual(row["strategy"], "breakout")
        self.assertAlmostEqual(row["confidence"], 0.83)
        self.assertAlmostEqual(row["return_pct"], 0.02)
        self.assertEqual(row["exit_analysis"]["path"], path)
        self.assertEqual(row["exit_analysis"]["hold_duration_hours"], 4.2)
        self.assertEqual((row["symbol"], row["side"], row["exit_reason"]), ("TQQQ", "BUY", "intelligent_exit"))
        # The server filled in the decision's own context.
        self.assertEqual(row["market_context"]["session"], "us_prime")
        self.assertEqual(row["entry_parameters"]["intelligence_weights.technical"], d["intelligence_weights.technical"])

    def test_report_skipped_is_a_zero_return_with_the_confidence(self) -> None:
        d = self.client.decide("stocks", "europe_prime", "sideways")
        r = self.client.report_skipped(d, confidence=0.41)
        self.assertTrue(r.delivered)
        self.assertEqual(r.reward, 0.0)
        row = self.target.stored_trade("stocks", d.decision_id or "")
        self.assertAlmostEqual(row["confidence"], 0.41)
        self.assertEqual(row["return_pct"], 0.0)
        self.assertEqual(row["reward"], 0.0)

    def test_report_closed_keeps_the_modules_own_fields_at_the_trade_top_level(self) -> None:
        d = self.client.decide("crypto", "us_prime", "volatile")
        try:
            r = self.client.report_closed(d, return_pct=-0.004, confidence=0.7, path=[-0.001, -0.004],
                                          signal_strength=0.91, venue="binance")
        except InvalidRequest as e:
            if unknown_field_refused(e, "signal_strength"):
                self.skipTest(f"this server refuses unknown trade fields (issue 18: it is being changed to keep them): {e}")
            raise
        self.assertTrue(r.delivered)
        row = self.target.stored_trade("crypto", d.decision_id or "")
        self.assertEqual(row.get("signal_strength"), 0.91, row)
        self.assertEqual(row.get("venue"), "binance", row)
        self.assertEqual(row["exit_analysis"]["path"], [-0.001, -0.004])

    def test_a_decision_names_its_strategy_and_the_trade_carries_it(self) -> None:
        try:
            d = self.client.decide("options", "us_prime", "bullish", strategy="long_calls")
        except InvalidRequest as e:
            if unknown_field_refused(e, "strategy"):
                self.skipTest(f"this server refuses a decision's strategy (issue 18: the server side lands with the lead's work): {e}")
            raise
        self.assertEqual(d.strategy, "long_calls")
        self.client.report_closed(d, return_pct=0.05, confidence=0.9)
        row = self.target.stored_trade("options", d.decision_id or "")
        self.assertEqual(row["strategy"], "long_calls")

    def test_greedy_parameters_match_a_decision_without_exploration(self) -> None:
        greedy = self.client.parameters("options", "europe_prime", "sideways")
        self.assertEqual(greedy["module"], "options")
        self.assertEqual(greedy["context"], {"session": "europe_prime", "regime": "sideways"})
        d = self.client.decide("options", "europe_prime", "sideways", explore=False)
        self.assertEqual(d.parameters, greedy["parameters"])
        self.assertFalse(d.explore)

    def test_errors_are_typed_and_name_the_bad_value(self) -> None:
        with self.assertRaises(InvalidRequest) as e:
            self.client.decide("forex", "asia_prime", "bullish")
        self.assertEqual(e.exception.status, 422)
        self.assertIn("forex", e.exception.message)
        with self.assertRaises(InvalidRequest) as e:
            self.client.decide("crypto", "tokyo", "bullish")
        self.assertIn("tokyo", e.exception.message)
        with self.assertRaises(InvalidRequest):
            self.client.decide("crypto", "asia_prime", "bullish", features={"momentum_score": float("nan")})
        d = self.client.decide("crypto", "asia_prime", "bullish")
        with self.assertRaises(InvalidRequest) as e:
            self.client.report(d)
        self.assertIn("return_pct", e.exception.message)
        with self.assertRaises(InvalidRequest) as e:
            self.client.report_closed(d, return_pct=0.01, confidence=1.5)
        self.assertIn("confidence", e.exception.message)
        with self.assertRaises(UnknownDecision) as unknown:
            self.client.report("0" * 32, reward=0.1)
        self.assertIsInstance(unknown.exception, NotFound)
        with self.assertRaises(PayloadTooLarge):
            self.client.decide("crypto", "asia_prime", "bullish", features={f"f{i}": 0.0 for i in range(10000)})
        with self.assertRaises(InvalidRequest) as e:
            self.client.rollback("crypto", "yesterday")
        self.assertIn("yesterday", e.exception.message)
        with self.assertRaises(NotFound):
            self.client.checkpoint("crypto", 999)
        with self.assertRaises(NotFound):
            self.client.rollback("crypto", 999)
        # The connection survives errors.
        self.assertEqual(self.client.health()["status"], "ok")

    def test_checkpoints_and_rollback_on_the_embedded_store(self) -> None:
        d = self.client.decide("stocks", "us_prime", "volatile")
        self.client.report(d, reward=0.02)
        made = self.client.create_checkpoint("stocks")
        self.assertGreaterEqual(made["generation"], 1)
        self.assertGreaterEqual(made["outcomes"], 1)
        listed = self.client.checkpoints("stocks")
        self.assertEqual(listed[0]["generation"], made["generation"])
        whole = self.client.checkpoint("stocks", made["generation"])
        self.assertIn("stats", whole)
        back = self.client.rollback("stocks", "defaults")
        self.assertEqual(back["checkpoint"]["generation"], made["generation"] + 1)
        self.assertEqual(back["checkpoint"]["parent"], made["generation"])
        greedy = self.client.parameters("stocks", "us_prime", "volatile")
        default = {p["name"]: p["default"] for m in self.client.modules() if m["module"] == "stocks" for p in m["parameters"]}
        self.assertEqual(greedy["parameters"], default)

    def test_an_ab_test_starts_assigns_decisions_and_stops(self) -> None:
        with self.assertRaises(InvalidRequest) as bad:
            self.client.start_ab_test("options", {"position_sizing.stop_loss_pct": 9.0})
        self.assertIn("position_sizing.stop_loss_pct = 9", str(bad.exception))
        test = self.client.start_ab_test("options", "defaults", split=0.5, min_outcomes=50)
        self.assertEqual(test["challenger"], "defaults")
        try:
            with self.assertRaises(AbTestRunning):
                self.client.start_ab_test("options", "defaults")
            arms = set()
            for _ in range(30):
                d = self.client.decide("options", "asia_prime", "bearish")
                self.assertEqual(d.raw["ab_test"]["test"], test["test"])
                arms.add(d.raw["ab_test"]["arm"])
                self.client.report(d, reward=0.01)
            self.assertEqual(arms, {"champion", "challenger"})
            self.assertEqual(self.client.ab_test("options")["running"]["test"], test["test"])
        finally:
            stopped = self.client.stop_ab_test("options")
        self.assertEqual(stopped["outcome"], "stopped")
        self.assertIsNone(self.client.ab_test("options")["running"])
        with self.assertRaises(NotFound):
            self.client.stop_ab_test("options")

    def test_a_wrong_or_missing_token_is_unauthorized(self) -> None:
        if not self.target.token:
            self.skipTest("the server runs without a token")
        with ParamoptClient(self.target.url, token="wrong") as bad:
            with self.assertRaises(Unauthorized) as e:
                bad.modules()
            self.assertEqual(e.exception.status, 401)
            self.assertIsInstance(e.exception, ParamoptError)
        with ParamoptClient(self.target.url) as none:
            with self.assertRaises(Unauthorized):
                none.decide("crypto", "asia_prime", "bullish")

    def test_five_hundred_decisions_and_outcomes_on_one_keep_alive_connection(self) -> None:
        before = self.target.metric("paramopt_connections_accepted_total")
        with ParamoptClient(self.target.url, token=self.target.token) as client:
            started = time.perf_counter()
            for i in range(500):
                session = ("asia_prime", "europe_prime", "us_prime")[i % 3]
                d = client.decide("crypto", session, "bearish", features={"momentum_score": (i % 10) / 10})
                self.assertTrue(client.report(d, reward=0.001 * (i % 7)).delivered)
            elapsed = time.perf_counter() - started
        # Timing is reported, not asserted (the machine is shared).
        print(f"\n500 decide+report pairs in {elapsed:.2f} s", file=sys.stderr)
        after = self.target.metric("paramopt_connections_accepted_total")
        self.assertEqual(after - before, 1 + 1, "one for the client, one for this scrape")

    def test_an_unreachable_server_is_unavailable_after_the_retries(self) -> None:
        policy = RetryPolicy(attempts=3, backoff=0.05, factor=2.0, jitter=0.0)
        with ParamoptClient("http://127.0.0.1:9", timeout=1, retry=policy) as dead:
            started = time.monotonic()
            with self.assertRaises(Unavailable) as e:
                dead.modules()
            waited = time.monotonic() - started
        self.assertIsNone(e.exception.status)
        self.assertIn("cannot reach", e.exception.message)
        self.assertGreaterEqual(waited, 0.05 + 0.10, "two backoffs between three attempts")


class SyncRetryTest(unittest.TestCase):
    """Retries through a proxy that loses answers or refuses requests on
    purpose, in front of the real server."""

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

    def setUp(self) -> None:
        self.client = ParamoptClient(self.proxy.url, token=self.target.token, retry=FAST)
        self.direct = ParamoptClient(self.target.url, token=self.target.token)

    def tearDown(self) -> None:
        self.client.close()
        self.direct.close()

    def test_an_outcome_whose_answer_was_lost_gets_409_on_the_retry_and_counts_as_delivered(self) -> None:
        outcomes_before = self.target.metric('paramopt_outcomes_total{module="crypto"}')
        d = self.client.decide("crypto", "europe_prime", "volatile")
        sent_before = self.proxy.count("POST", "/v1/outcomes")
        self.proxy.plan("POST", "/v1/outcomes", ["lose"])
        r = self.client.report_closed(d, return_pct=0.01, confidence=0.6, path=[0.01])
        self.assertTrue(r.delivered, r)
        self.assertTrue(r.duplicate, r)
        self.assertIsNone(r.reward)
        self.assertEqual(self.proxy.count("POST", "/v1/outcomes") - sent_before, 2, "the first try and one retry")
        # The server learned it exactly once.
        self.assertEqual(self.target.metric('paramopt_outcomes_total{module="crypto"}') - outcomes_before, 1)
        with self.assertRaises(DuplicateOutcome):
            self.direct.report(d, reward=0.01)

    def test_5xx_and_429_are_retried_and_the_outcome_lands_once(self) -> None:
        d = self.client.decide("options", "asia_prime", "sideways")
        self.proxy.plan("POST", "/v1/outcomes", [503, 429])
        r = self.client.report(d, reward=0.02)
        self.assertTrue(r.delivered)
        self.assertFalse(r.duplicate)
        self.assertEqual(r.attempts, 3)
        self.assertAlmostEqual(r.reward or 0.0, 0.02)

    def test_a_decision_whose_answer_was_lost_is_asked_again(self) -> None:
        self.proxy.plan("POST", "/v1/decisions", ["lose"])
        d = self.client.decide("crypto", "asia_prime", "sideways")
        self.assertEqual(len(d.decision_id or ""), 32)
        self.assertTrue(self.client.report(d, reward=0.0).delivered)

    def test_the_retries_run_out(self) -> None:
        d = self.client.decide("stocks", "asia_prime", "bullish")
        self.proxy.plan("POST", "/v1/outcomes", [503, 503, 503])
        with self.assertRaises(Unavailable) as e:
            self.client.report(d, reward=0.01)
        self.assertEqual(e.exception.status, 503)
        # Nothing reached the server: the decision still takes its outcome.
        self.assertTrue(self.client.report(d, reward=0.01).delivered)

    def test_a_call_that_changes_state_is_not_repeated_after_a_5xx(self) -> None:
        before = self.proxy.count("POST", "/v1/rollback")
        self.proxy.plan("POST", "/v1/rollback", [503])
        with self.assertRaises(Unavailable):
            self.client.rollback("stocks", "defaults")
        self.assertEqual(self.proxy.count("POST", "/v1/rollback") - before, 1)
        # A 429 means the server did not take it: that one is retried.
        self.proxy.plan("POST", "/v1/rollback", [429])
        back = self.client.rollback("stocks", "defaults")
        self.assertEqual(back["rolled_back_to"], "defaults")
        self.assertEqual(self.proxy.count("POST", "/v1/rollback") - before, 3)


if __name__ == "__main__":
    unittest.main()
