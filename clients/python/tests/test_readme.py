"""The README's "What a trading module adds" examples run, as a module
would run them, against the real server: every python block of that
section in clients/python/README.md, and in the repository's README.md when
it has the section too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import List

from support import REPO, Target

SECTION = "What a trading module adds"


def examples(readme: Path) -> List[str]:
    """The python blocks of the section (up to the next heading of its level
    or above; lines inside code blocks are not headings)."""
    if not readme.exists():
        return []
    blocks: List[str] = []
    level = 0  # the section's heading level while inside it
    fence: List[str] = []
    in_fence = in_python = False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            if in_fence and in_python and level:
                blocks.append("\n".join(fence) + "\n")
            in_fence, in_python, fence = not in_fence, line.strip() == "```python", []
            continue
        if in_fence:
            fence.append(line)
            continue
        heading = re.match(r"^(#+) (.*?)\s*$", line)
        if heading:
            if heading.group(2) == SECTION:
                level = len(heading.group(1))
            elif level and len(heading.group(1)) <= level:
                level = 0
    return blocks


class ReadmeExampleTest(unittest.TestCase):
    target: Target

    @classmethod
    def setUpClass(cls) -> None:
        cls.target = Target.get()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.target.close()

    def test_the_clients_readme_has_examples(self) -> None:
        self.assertGreaterEqual(len(examples(REPO / "clients" / "python" / "README.md")), 2, "sync and asyncio")

    def test_every_example_runs_and_reports_to_the_server(self) -> None:
        ran = 0
        for readme in (REPO / "clients" / "python" / "README.md", REPO / "README.md"):
            for i, code in enumerate(examples(readme)):
                with self.subTest(readme=str(readme.relative_to(REPO)), example=i):
                    self.run_example(code)
                ran += 1
        self.assertGreaterEqual(ran, 2)

    def run_example(self, code: str) -> None:
        env = dict(os.environ, PARAMOPT_URL=self.target.url)
        env.pop("PARAMOPT_TOKEN", None)
        if self.target.token:
            env["PARAMOPT_TOKEN"] = self.target.token
        before = self.target.outcomes()
        with tempfile.TemporaryDirectory(prefix="paramopt-readme-") as cwd:
            done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("seed defaults", done.stdout + done.stderr, "the server is up: no fallback")
        self.assertGreater(self.target.outcomes(), before, "the example reported an outcome")
        # A decision id it prints has its trade record in the store.
        for decision_id in re.findall(r"\b[0-9a-f]{32}\b", done.stdout):
            row = self.target.stored_trade(None, decision_id)
            self.assertEqual(row["decision_id"], decision_id)
            self.assertIn("return_pct", row)


if __name__ == "__main__":
    unittest.main()
