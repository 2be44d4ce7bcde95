"""Real servers for the synth backend tests: a tiny trained checkpoint served by `minisigma serve`
in a subprocess, and a fault-injecting HTTP proxy (429, 500/503, stalls, dropped connections)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent

TOOLS = {
    "ls -la": "list all files with details",
    "df -h": "show free disk space in human readable units",
    "du -sh .": "show the size of the current directory",
    "ps aux": "list every running process",
    "tar -czf backup.tar.gz docs": "compress the docs directory into backup.tar.gz",
    "grep -rn TODO src": "find TODO lines in the src tree with line numbers",
    "find . -name '*.log' -delete": "delete every log file below here",
    "uname -a": "print the kernel version and machine name",
    "free -m": "show memory use in megabytes",
    "wc -l notes.txt": "count the lines of notes.txt",
}


def build_tiny_checkpoint(out_dir: Path, steps: int = 80, seed: int = 0) -> Path:
    """Train a byte-level BPE and a tiny DiffQKV GPT on chat-formatted (task, command) pairs."""
    import torch

    from model.chat import pair_to_messages, render
    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained
    from model.tokenizer import train_tokenizer

    torch.manual_seed(seed)
    docs = [{"text": f"{task}\n{cmd}\n"} for cmd, task in TOOLS.items()] * 20
    tok, _ = train_tokenizer(docs, vocab_size=400, min_frequency=1)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64, n_q=4, n_k=1, n_v=2, d_qk=16,
                      d_v=16, ffn_hidden=128, max_seq_len=256, name="synth-test-tiny")
    model = GPT(cfg)
    seqs = [render(pair_to_messages({"task": t, "command": c}), tok)[0] for c, t in TOOLS.items()]
    L = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), L, dtype=torch.long)
    y = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        y[i, :len(s) - 1] = torch.tensor(s[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_pretrained(model, out_dir, tokenizer=tok)
    (Path(out_dir) / "train_loss.txt").write_text(f"{loss.item():.4f}\n")
    return Path(out_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`minisigma serve --checkpoint DIR --port N` as a real subprocess (the CLI entry point).

    With `api_key` the key travels in $MINISIGMA_API_KEY and every helper request sends it;
    without, the server runs with --no-auth on 127.0.0.1. `extra` are more CLI options."""

    def __init__(self, checkpoint: Path, max_batch: int = 8, log_dir: Path | None = None,
                 api_key: str | None = None, extra: list[str] | None = None):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("MINISIGMA_API_KEY", None)
        if api_key is not None:
            env["MINISIGMA_API_KEY"] = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.log = open((log_dir or Path(checkpoint)) / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from minisigma.cli import main; main()", "serve", "--checkpoint",
             str(checkpoint), "--port", str(self.port), "--max-batch", str(max_batch), "--model-name", "tiny",
             *([] if api_key else ["--no-auth"]), *(extra or [])],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: "
                                   f"{Path(self.log.name).read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("serve did not come up")

    def stats(self) -> dict:
        return requests.get(self.url + "/stats", headers=self.headers, timeout=5).json()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class FaultProxy:
    """A threaded HTTP/1.1 proxy in front of `upstream` that injects faults on a fixed schedule.

    Each request (one per connection: the proxy answers with Connection: close) gets the next
    action of `schedule`, cycled: "ok" (forward, relay the answer), "429" (with Retry-After),
    "500", "503", "stall" (hold the connection open without answering, longer than the client's
    read timeout), "drop" (close without answering), "cut" (forward, then close the connection
    half-way through the upstream's answer). Counts every action and every forwarded request, and
    records the Authorization headers it sees (so a test can check the key went only there).
    """

    def __init__(self, upstream_port: int, schedule: list[str], stall_s: float = 3.0):
        self.upstream_port = upstream_port
        self.schedule = schedule
        self.stall_s = stall_s
        self.counts: Counter = Counter()
        self.auth_headers: list[str] = []
        self._n = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return head + b"\r\n\r\n" + body

    def _handle(self, conn):
        try:
            req = self._read_request(conn)
            if req is None:
                return
            head = req.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            for line in head.split("\r\n")[1:]:
                if line.lower().startswith("authorization:"):
                    with self._lock:
                        self.auth_headers.append(line.split(":", 1)[1].strip())
            with self._lock:
                action = self.schedule[self._n % len(self.schedule)] if head.startswith("POST") else "ok"
                self._n += 1
                self.counts[action] += 1
            if action in ("429", "500", "503"):
                body = json.dumps({"error": {"message": f"injected {action}"}}).encode()
                extra = "Retry-After: 0\r\n" if action == "429" else ""
                conn.sendall(f"HTTP/1.1 {action} Injected\r\nContent-Type: application/json\r\n{extra}"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                return
            if action == "stall":
                time.sleep(self.stall_s)
                return
            if action == "drop":
                return
            # forward with Connection: close so the upstream ends the answer by closing
            lines = [l for l in head.split("\r\n") if not l.lower().startswith("connection:")]
            fwd = ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1") + req.split(b"\r\n\r\n", 1)[1]
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60)
            with self._lock:
                self.counts["forwarded"] += 1
            up.sendall(fwd)
            answer = b""
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    break
                answer += chunk
            up.close()
            if action == "cut":
                conn.sendall(answer[: max(1, len(answer) * 2 // 3)])
                return
            conn.sendall(answer)
        except OSError:
            pass
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()
