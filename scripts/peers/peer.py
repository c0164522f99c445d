"""A peer learner for `paramopt backtest`: Vowpal Wabbit or MABWiser, driven
by the Rust backtest over JSON lines on stdin/stdout (src/eval/peers.rs).

Factorised like the agent and the Rust baselines: one learner per parameter,
whose actions are that parameter's arms, all seeing the decision's context
(session, regime) and its features (normalised to [0, 1] by the Rust side),
and all learning the decision's one reward when its trade closes.

- vw: one `--cb_explore_adf` learner per parameter, epsilon-greedy
  exploration (epsilon 0.05), shared features `|s session regime` and
  `|f feature:value ...`, action features `|a arm<k>`, interactions `-q sa
  -q fa` (so every arm has its own weight per session, regime and feature),
  cost = -reward. The action is drawn from VW's pmf with a seeded RNG.
- mabwiser: one LinTS (linear Thompson sampling) learner per parameter on
  the context vector [one-hot session, one-hot regime, features], alpha =
  the module's prior noise sd (the posterior's noise scale). MABWiser's
  partial_fit costs about 1 ms a call and its predict 0.25 ms whatever the
  batch, so reports are learned in batches of 32 and the Rust side asks for
  32 decisions at a time (its model is up to 32 decisions staler than the
  other learners'); until the first batch, arms are drawn uniformly.

Protocol, one JSON object per line:
  -> {"op": "init", "learner": "vw"|"mabwiser", "seed": S, "arms": [k, ...],
      "features": n, "noise_sd": s}                      <- {"ok": true}
  -> {"op": "decide", "items": [{"id": i, "session": "...", "regime": "...",
      "x": [...]}, ...]}                                 <- {"arms": [[...], ...]}
  -> {"op": "report", "id": i, "reward": r}              (no answer)
  -> {"op": "end"}                                       <- {"ok": true, "learned": n}
Any failure answers {"error": "..."} and exits non-zero.
"""

import json
import random
import sys

SESSIONS = ["asia_prime", "europe_prime", "us_prime"]
REGIMES = ["bullish", "bearish", "sideways", "volatile"]
MABWISER_BATCH = 32


class Vw:
    def __init__(self, arms, seed, noise_sd):
        import vowpalwabbit

        self.arms = arms
        self.rng = random.Random(seed)
        self.learners = [
            vowpalwabbit.Workspace(
                f"--cb_explore_adf -q sa -q fa --epsilon 0.05 --quiet --random_seed {seed + p}"
            )
            for p in range(len(arms))
        ]
        self.open = {}
        self.learned = 0

    @staticmethod
    def shared(item):
        feats = " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(item["x"]))
        return f"shared |s {item['session']} {item['regime']} |f {feats}"

    def decide(self, items):
        out = []
        for item in items:
            shared = self.shared(item)
            chosen = []
            for p, vw in enumerate(self.learners):
                actions = [f"|a arm{k}" for k in range(self.arms[p])]
                pmf = vw.predict([shared] + actions)
                k = self.draw(pmf)
                chosen.append((k, max(pmf[k], 1e-6)))
            self.open[item["id"]] = (shared, chosen)
            out.append([k for k, _ in chosen])
        return out

    def draw(self, pmf):
        u, acc = self.rng.random(), 0.0
        for k, p in enumerate(pmf):
            acc += p
            if u < acc:
                return k
        return len(pmf) - 1

    def report(self, id_, reward):
        shared, chosen = self.open.pop(id_)
        for p, vw in enumerate(self.learners):
            k, prob = chosen[p]
            lines = [shared] + [
                (f"0:{-reward:.9g}:{prob:.9g} |a arm{j}" if j == k else f"|a arm{j}") for j in range(self.arms[p])
            ]
            vw.learn(lines)
        self.learned += 1

    def end(self):
        for vw in self.learners:
            vw.finish()
        return self.learned


class Mabwiser:
    def __init__(self, arms, seed, noise_sd):
        from mabwiser.mab import MAB, LearningPolicy

        self.arms = arms
        self.rng = random.Random(seed)
        self.learners = [
            MAB(
                arms=list(range(k)),
                learning_policy=LearningPolicy.LinTS(alpha=noise_sd, l2_lambda=1.0),
                seed=seed + p,
            )
            for p, k in enumerate(arms)
        ]
        self.fitted = False
        self.open = {}
        self.batch = []
        self.learned = 0

    @staticmethod
    def context(item):
        s = [1.0 if item["session"] == x else 0.0 for x in SESSIONS]
        r = [1.0 if item["regime"] == x else 0.0 for x in REGIMES]
        return s + r + list(item["x"])

    def decide(self, items):
        import numpy as np

        contexts = [self.context(item) for item in items]
        per_param = []
        for p, mab in enumerate(self.learners):
            if self.fitted:
                got = mab.predict(np.array(contexts))
                got = got if isinstance(got, list) else [got]
                per_param.append([int(k) for k in got])
            else:
                per_param.append([self.rng.randrange(self.arms[p]) for _ in items])
        out = []
        for i, item in enumerate(items):
            arms = [per_param[p][i] for p in range(len(self.learners))]
            self.open[item["id"]] = (contexts[i], arms)
            out.append(arms)
        return out

    def report(self, id_, reward):
        context, arms = self.open.pop(id_)
        self.batch.append((context, arms, reward))
        if len(self.batch) >= MABWISER_BATCH:
            self.flush()

    def flush(self):
        import numpy as np

        if not self.batch:
            return
        x = np.array([c for c, _, _ in self.batch])
        rewards = [r for _, _, r in self.batch]
        for p, mab in enumerate(self.learners):
            decisions = [a[p] for _, a, _ in self.batch]
            if self.fitted:
                mab.partial_fit(decisions, rewards, x)
            else:
                mab.fit(decisions, rewards, x)
        self.fitted = True
        self.learned += len(self.batch)
        self.batch = []

    def end(self):
        self.flush()
        return self.learned


LEARNERS = {"vw": Vw, "mabwiser": Mabwiser}


def main():
    learner = None
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "report":
            learner.report(msg["id"], float(msg["reward"]))
            continue
        if op == "init":
            learner = LEARNERS[msg["learner"]](msg["arms"], int(msg["seed"]), float(msg["noise_sd"]))
            answer = {"ok": True}
        elif op == "decide":
            answer = {"arms": learner.decide(msg["items"])}
        elif op == "end":
            answer = {"ok": True, "learned": learner.end()}
        else:
            raise ValueError(f"unknown op {op!r}")
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if op == "end":
            return


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the Rust side reads this line and stops the run with it
        sys.stdout.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        sys.stdout.flush()
        sys.exit(1)
