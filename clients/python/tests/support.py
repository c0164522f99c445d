"""What the tests share: a real `paramopt serve` to run against, the store's
trade records, and a fault-injecting proxy (it forwards to the real server;
it only loses answers or refuses requests on purpose).

The server: $PARAMOPT_TEST_URL (with $PARAMOPT_TEST_TOKEN and its store
directory in $PARAMOPT_TEST_STORE), as the Rust integration test starts it;
otherwise a `paramopt serve` these tests start. Tests that stop a server
always start their own, from $PARAMOPT_BIN (else target/{release,debug}/
paramopt of this repository or $CARGO_TARGET_DIR), with the model files in
$PARAMOPT_MODELS (else models/ of this repository).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[3]
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
    raise RuntimeError("no paramopt binary: build it (cargo build --release) or set PARAMOPT_BIN")


def models_dir() -> Path:
    return Path(os.environ.get("PARAMOPT_MODELS", str(REPO / "models")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`paramopt serve` on 127.0.0.1 (a free port unless given), on a store
    of its own; `stop()` sends SIGTERM, `start()` again serves the same store
    on the same port."""

    def __init__(self, token: Optional[str] = None, port: Optional[int] = None) -> None:
        self.token = token
        self.port = port or free_port()
        self._data = tempfile.TemporaryDirectory(prefix="paramopt-client-test-")
        self.store = Path(self._data.name) / "store"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[str]] = None
        self.start()

    def start(self) -> None:
        assert self.proc is None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMOPT_")}
        env["RUST_LOG"] = "warn"
        args = [server_binary(), "--models", str(models_dir()), "serve", "--addr", f"127.0.0.1:{self.port}",
                "--seed", "7", "--store", str(self.store), "--data-dir", self._data.name]
        if self.token:
            args += ["--token", self.token]
        deadline = time.monotonic() + 20
        while True:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            if re.search(r"http://\S+", line):
                self.proc = proc
                return
            # The port of a server just stopped can take a moment to be free.
            proc.wait()
            err = proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {line!r} {err}")
            time.sleep(0.2)

    def stop(self) -> int:
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        proc.terminate()
        code = proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        return code

    def close(self) -> None:
        if self.proc is not None:
            code = self.stop()
            assert code == 0, f"graceful shutdown exits 0, not {code}"
        self._data.cleanup()


class Target:
    """The server a test module runs against: the one given by the
    environment, or one started here."""

    def __init__(self, url: str, token: Optional[str], store: Optional[Path], owned: Optional[Server]) -> None:
        self.url = url
        self.token = token
        self.store = store
        self._owned = owned

    @classmethod
    def get(cls) -> "Target":
        url = os.environ.get("PARAMOPT_TEST_URL")
        if url:
            store = os.environ.get("PARAMOPT_TEST_STORE")
            return cls(url.rstrip("/"), os.environ.get("PARAMOPT_TEST_TOKEN") or None, Path(store) if store else None, None)
        server = Server(token=TOKEN)
        return cls(server.url, TOKEN, server.store, server)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M)
        assert match, f"no {name} in /metrics"
        return float(match.group(1))

    def outcomes(self) -> float:
        """Outcomes accepted so far, over every module."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(v) for v in re.findall(r"^paramopt_outcomes_total\{[^}]*\} ([0-9.eE+-]+)$", text, re.M))

    def stored_trade(self, module: Optional[str], decision_id: str, timeout: float = 15.0) -> Dict[str, Any]:
        """The trade record the server stored for `decision_id` (the embedded
        store's trades/MODULE.jsonl, or any module's with None; records
        follow in the decision log's batches, so this waits for it)."""
        if self.store is None:
            raise unittest_skip("the server's store directory is not known (set PARAMOPT_TEST_STORE)")
        trades = self.store / "trades"
        deadline = time.monotonic() + timeout
        while True:
            paths = [trades / f"{module}.jsonl"] if module else sorted(trades.glob("*.jsonl"))
            for path in paths:
                if not path.exists():
                    continue
                for line in path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line being written
                    if row.get("decision_id") == decision_id:
                        return dict(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"no trade record for {decision_id} in {paths} after {timeout} s")
            time.sleep(0.05)


def unittest_skip(reason: str) -> Exception:
    import unittest

    return unittest.SkipTest(reason)


def reward_scale(module: str) -> float:
    """The module's reward scale, read from its model file."""
    text = (models_dir() / f"{module}.toml").read_text()
    block = text.split("[reward]", 1)[1]
    match = re.search(r"^scale\s*=\s*([0-9.eE+-]+)", block, re.M)
    assert match, f"no [reward] scale in {module}.toml"
    return float(match.group(1))


def unknown_field_refused(error: Exception, field: str) -> bool:
    """A 422 that refuses `field` as unknown: a server from before the trade
    and decision records kept the module's own fields."""
    return getattr(error, "status", None) == 422 and "unknown field" in str(error) and field in str(error)


# --------------------------------------------------------------- the proxy

#: What the proxy does with one request: "forward", "lose" (forward it, then
#: close the connection instead of answering: the server did the work, the
#: client never hears), or a status to answer itself without forwarding.
Action = Any
Rule = Callable[[str, str, bytes], Action]


class FaultProxy:
    """An HTTP/1.1 proxy on a free loopback port in front of the real
    server. `plan(method, path_prefix, actions)` queues what to do with the
    next matching requests (forward the rest); `seen` lists every request
    (method, path) it received."""

    def __init__(self, upstream: str) -> None:
        m = re.match(r"http://([^:/]+):(\d+)", upstream)
        assert m, upstream
        self._upstream = (m.group(1), int(m.group(2)))
        self._plans: List[Tuple[str, str, List[Action]]] = []
        self._lock = threading.Lock()
        self.seen: List[Tuple[str, str]] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def plan(self, method: str, path_prefix: str, actions: List[Action]) -> None:
        with self._lock:
            self._plans.append((method, path_prefix, list(actions)))

    def count(self, method: str, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.seen if m == method and p.startswith(path_prefix))

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _action(self, method: str, path: str) -> Action:
        with self._lock:
            self.seen.append((method, path))
            for m, prefix, actions in self._plans:
                if m == method and path.startswith(prefix) and actions:
                    return actions.pop(0)
        return "forward"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                head, body = request
                method, path = head[0].split(" ")[:2]
                action = self._action(method, path)
                if isinstance(action, int):
                    text = json.dumps({"error": f"injected {action}"}).encode()
                    extra = "Retry-After: 0\r\n" if action == 429 else ""
                    conn.sendall(f"HTTP/1.1 {action} Injected\r\nContent-Type: application/json\r\n{extra}"
                                 f"Content-Length: {len(text)}\r\n\r\n".encode() + text)
                    continue
                answer = self._forward(head, body)
                if action == "lose":
                    return  # the server has done it; the client hears nothing
                conn.sendall(answer)
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    def _forward(self, head: List[str], body: bytes) -> bytes:
        with socket.create_connection(self._upstream, timeout=10) as up:
            lines = [h for h in head if not h.lower().startswith("connection:")] + ["Connection: close"]
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            chunks = []
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        raw = b"".join(chunks)
        # Answer on the client's keep-alive connection: drop "close".
        top, _, rest = raw.partition(b"\r\n\r\n")
        kept = [line for line in top.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join(kept) + b"\r\n\r\n" + rest


def _read_request(reader: Any) -> Optional[Tuple[List[str], bytes]]:
    head: List[str] = []
    while True:
        line = reader.readline()
        if not line:
            return None
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            break
        head.append(text)
    length = 0
    for h in head[1:]:
        name, _, value = h.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return head, reader.read(length) if length else b""
