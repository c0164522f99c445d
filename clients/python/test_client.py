"""Tests of paramopt_client against a real `paramopt serve` process.

Run from this directory: `python3 -m unittest -v test_client`. The server
binary is $PARAMOPT_BIN, else target/{release,debug}/paramopt of this repo (or
of $CARGO_TARGET_DIR); the model files are $PARAMOPT_MODELS, else ../../models.
"""

import os
import re
import subprocess
import tempfile
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paramopt_client import (  # noqa: E402
    AbTestRunning,
    DuplicateOutcome,
    InvalidRequest,
    NotFound,
    ParamoptClient,
    ParamoptError,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnknownDecision,
)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "python-test-token"


def server_binary() -> str:
    if os.environ.get("PARAMOPT_BIN"):
        return os.environ["PARAMOPT_BIN"]
    targets = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    targets.append(REPO / "target")
    for target in targets:
        for profile in ("release", "debug"):
            candidate = target / profile / "paramopt"
            if candidate.exists():
                return str(candidate)
    raise RuntimeError("no paramopt binary: build it (cargo build) or set PARAMOPT_BIN")


class Server:
    """`paramopt serve` on a free port, stopped with SIGTERM."""

    def __init__(self, token=None):
        models = os.environ.get("PARAMOPT_MODELS", str(REPO / "models"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMOPT_")}
        env["RUST_LOG"] = "warn"
        self.data = tempfile.TemporaryDirectory(prefix="paramopt-client-test-")
        args = [server_binary(), "serve", "--addr", "127.0.0.1:0", "--models", models, "--seed", "7",
                "--store", os.path.join(self.data.name, "store"), "--data-dir", self.data.name]
        if token:
            args += ["--token", token]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = match.group(1)

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.data.cleanup()
        return code


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(token=TOKEN)
        cls.client = ParamoptClient(cls.server.url, token=TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.server.stop() == 0, "graceful shutdown exits 0"

    def test_modules_list_the_three_spaces(self):
        modules = {m["module"]: m for m in self.client.modules()}
        self.assertEqual(sorted(modules), ["crypto", "options", "stocks"])
        p = modules["crypto"]["parameters"][0]
        for field in ("name", "group", "default", "range", "kind", "arms"):
            self.assertIn(field, p)

    def test_decide_returns_every_parameter_and_report_is_accepted_once(self):
        space = {m["module"]: m for m in self.client.modules()}["crypto"]
        d = self.client.decide("crypto", "asia_prime", "bullish", features={"momentum_score": 0.72})
        self.assertEqual(len(d["decision_id"]), 32)
        self.assertEqual(d["module"], "crypto")
        self.assertEqual(set(d["parameters"]), {p["name"] for p in space["parameters"]})
        self.assertIsInstance(d["policy_generation"], int)
        ok = self.client.report(d["decision_id"], reward=0.0123)
        self.assertTrue(ok["accepted"])
        with self.assertRaises(DuplicateOutcome) as e:
            self.client.report(d["decision_id"], reward=0.0123)
        self.assertEqual(e.exception.status, 409)
        self.assertIn(d["decision_id"], e.exception.message)

    def test_a_trade_alone_gives_the_reward_and_a_skip_counts_as_zero(self):
        d = self.client.decide("stocks", "us_prime", "volatile")
        trade = {"symbol": "TQQQ", "side": "BUY", "quantity": 10, "price": 45.5, "profit_loss": 12.0,
                 "return_pct": 0.02, "exit_reason": "intelligent_exit",
                 "exit_analysis": {"hold_duration_hours": 4.2}}
        reward = self.client.report(d["decision_id"], trade=trade)["reward"]
        self.assertAlmostEqual(reward, self.client_reward_scale("stocks") * 0.02)
        d = self.client.decide("stocks", "us_prime", "volatile")
        self.assertEqual(self.client.report(d["decision_id"], traded=False)["reward"], 0.0)

    def client_reward_scale(self, module):
        # The scale lives in the model file; read it rather than hard-code it.
        text = (Path(os.environ.get("PARAMOPT_MODELS", str(REPO / "models"))) / f"{module}.toml").read_text()
        block = text.split("[reward]", 1)[1]
        return float(re.search(r"^scale\s*=\s*([0-9.eE+-]+)", block, re.M).group(1))

    def test_greedy_parameters_match_a_decision_without_exploration(self):
        greedy = self.client.parameters("options", "europe_prime", "sideways")
        self.assertEqual(greedy["module"], "options")
        self.assertEqual(greedy["context"], {"session": "europe_prime", "regime": "sideways"})
        d = self.client.decide("options", "europe_prime", "sideways", explore=False)
        self.assertEqual(d["parameters"], greedy["parameters"])

    def test_errors_are_typed_and_name_the_bad_value(self):
        with self.assertRaises(InvalidRequest) as e:
            self.client.decide("forex", "asia_prime", "bullish")
        self.assertEqual(e.exception.status, 422)
        self.assertIn("forex", e.exception.message)
        with self.assertRaises(InvalidRequest) as e:
            self.client.decide("crypto", "tokyo", "bullish")
        self.assertIn("tokyo", e.exception.message)
        # An undeclared feature is accepted, listed and not learned from.
        d = self.client.decide("crypto", "asia_prime", "bullish", features={"rsi": 0.5})
        self.assertEqual(d["ignored_features"], ["rsi"])
        with self.assertRaises(InvalidRequest):
            self.client.decide("crypto", "asia_prime", "bullish", features={"momentum_score": float("nan")})
        d = self.client.decide("crypto", "asia_prime", "bullish")
        with self.assertRaises(InvalidRequest) as e:
            self.client.report(d["decision_id"])
        self.assertIn("return_pct", e.exception.message)
        with self.assertRaises(UnknownDecision) as e:
            self.client.report("0" * 32, reward=0.1)
        self.assertIsInstance(e.exception, NotFound)
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

    def test_checkpoints_and_rollback_on_the_embedded_store(self):
        d = self.client.decide("stocks", "us_prime", "volatile")
        self.client.report(d["decision_id"], reward=0.02)
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
        self.assertEqual(greedy["parameters"]["intelligence_weights.technical"], 0.40)

    def test_an_ab_test_starts_assigns_decisions_and_stops(self):
        with self.assertRaises(InvalidRequest) as bad:
            self.client.start_ab_test("options", {"position_sizing.stop_loss_pct": 9.0})
        self.assertIn("position_sizing.stop_loss_pct = 9", str(bad.exception))
        test = self.client.start_ab_test("options", "defaults", split=0.5, min_outcomes=50)
        self.assertEqual(test["challenger"], "defaults")
        with self.assertRaises(AbTestRunning):
            self.client.start_ab_test("options", "defaults")
        arms = set()
        for _ in range(30):
            d = self.client.decide("options", "us_prime", "bullish")
            self.assertEqual(d["ab_test"]["test"], test["test"])
            arms.add(d["ab_test"]["arm"])
            self.client.report(d["decision_id"], reward=0.01)
        self.assertEqual(arms, {"champion", "challenger"})
        self.assertEqual(self.client.ab_test("options")["running"]["test"], test["test"])
        stopped = self.client.stop_ab_test("options")
        self.assertEqual(stopped["outcome"], "stopped")
        self.assertIsNone(self.client.ab_test("options")["running"])
        with self.assertRaises(NotFound):
            self.client.stop_ab_test("options")

    def test_a_wrong_token_is_unauthorized(self):
        with ParamoptClient(self.server.url, token="wrong") as bad:
            with self.assertRaises(Unauthorized) as e:
                bad.modules()
            self.assertEqual(e.exception.status, 401)
            self.assertIsInstance(e.exception, ParamoptError)
        with ParamoptClient(self.server.url) as none:
            with self.assertRaises(Unauthorized):
                none.decide("crypto", "asia_prime", "bullish")

    def test_a_thousand_decisions_and_outcomes_on_one_keep_alive_connection(self):
        before = self.connections_accepted()
        with ParamoptClient(self.server.url, token=TOKEN) as client:
            started = time.perf_counter()
            for i in range(1000):
                session = ("asia_prime", "europe_prime", "us_prime")[i % 3]
                d = client.decide("crypto", session, "bullish", features={"momentum_score": (i % 10) / 10})
                client.report(d["decision_id"], reward=0.001 * (i % 7))
            elapsed = time.perf_counter() - started
        # Timing is reported, not asserted: no 40 ms stalls means well under a second per 100.
        print(f"\n1000 decide+report pairs in {elapsed:.2f} s", file=sys.stderr)
        self.assertEqual(self.connections_accepted() - before, 1 + 1, "one for the client, one for the scrape")

    def connections_accepted(self):
        import urllib.request

        with urllib.request.urlopen(self.server.url + "/metrics") as r:
            text = r.read().decode()
        return int(re.search(r"^paramopt_connections_accepted_total (\d+)$", text, re.M).group(1))

    def test_an_unreachable_server_is_unavailable(self):
        with ParamoptClient("http://127.0.0.1:9", timeout=1) as dead:
            with self.assertRaises(Unavailable) as e:
                dead.modules()
            self.assertIsNone(e.exception.status)


if __name__ == "__main__":
    unittest.main()
