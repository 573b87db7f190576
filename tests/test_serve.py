"""`specdiff serve` as a real process on a free localhost port, spoken to with the official `openai`
client and with raw HTTP: plain, streamed and `specdiff generate` texts agree, stop strings, seeds,
32 concurrent streams, a client that leaves, malformed requests, a full queue, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

METHOD = ["--method", "ddtree", "--budget", "16", "--engine", "static"]
PROMPT = "def fibonacci(n):"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specdiff", "serve", *METHOD, "--port", str(port),
                             "--max-new-tokens", "64", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def server():
    proc, url = start("--queue", "40")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none")


def test_plain_streamed_and_generate_agree(server, client):
    plain = client.completions.create(model="specdiff", prompt=PROMPT, max_tokens=24, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="specdiff", prompt=PROMPT, max_tokens=24, temperature=0, stream=True) if c.choices)
    cli = subprocess.run([sys.executable, "-m", "specdiff", "generate", *METHOD, "--prompt", PROMPT,
                          "--max-new-tokens", "24", "--json"], capture_output=True, text=True, check=True)
    assert plain.choices[0].text == streamed == json.loads(cli.stdout)["text"]
    assert plain.usage.completion_tokens == 24 and plain.choices[0].finish_reason == "length"
    assert plain.model_extra["specdiff"]["method"] == "ddtree" and plain.model_extra["specdiff"]["tau"] >= 1
    chat = client.chat.completions.create(model="specdiff", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 8
    assert [m.id for m in client.models.list().data] == ["specdiff"]


def test_stop_strings_and_seeds(client):
    full = client.completions.create(model="specdiff", prompt=PROMPT, max_tokens=32, temperature=0).choices[0].text
    stop = full[10:13]
    cut = client.completions.create(model="specdiff", prompt=PROMPT, max_tokens=32, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    a, b = (client.completions.create(model="specdiff", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=11)
            .choices[0].text for _ in range(2))
    assert a == b


def test_32_concurrent_streams_get_their_own_texts(server, client):
    prompts = [f"def f{i}(x):" for i in range(32)]
    want = {p: client.completions.create(model="specdiff", prompt=p, max_tokens=8, temperature=0).choices[0].text
            for p in prompts}
    got, errors = {}, []

    def one(p):
        try:
            c = openai.OpenAI(base_url=server + "/v1", api_key="none")
            got[p] = "".join(ch.choices[0].text for ch in c.completions.create(
                model="specdiff", prompt=p, max_tokens=8, temperature=0, stream=True) if ch.choices)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and got == want


def test_a_client_that_leaves_frees_the_server(server):
    with httpx.stream("POST", server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 64, "temperature": 0,
                                                                  "stream": True}, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 2:
                break  # leave mid-stream
    deadline = time.time() + 5
    while httpx.get(server + "/health").json()["queue_depth"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(server + "/health").json()["queue_depth"] == 0
    metrics = httpx.get(server + "/metrics").text
    assert "specdiff_requests_total" in metrics and "specdiff_tau_bucket" in metrics


def test_malformed_requests_get_400_and_the_server_stays_up(server):
    bad = [b"{not json", {"max_tokens": 4}, {"prompt": "x", "max_tokens": 0}, {"prompt": "x", "temperature": -1},
           {"prompt": "x", "top_p": 2}, {"prompt": "x", "n": 2}, {"prompt": ["a", "b"]}, {"prompt": "x", "stop": 3},
           {"prompt": "x", "top_k": -1}, {"prompt": "x", "seed": "s"}]
    for body in bad:
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
            {"json": body}
        r = httpx.post(server + "/v1/completions", timeout=30, **kw)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) >= {"message", "type"}
    r = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_a_full_queue_answers_429():
    from fastapi.testclient import TestClient

    from specdiff.serve.app import create_app

    class Full:
        depth = 3

        def submit(self, job):
            return False

    tok = type("Tok", (), {"__call__": lambda self, text: {"input_ids": [1, 2]}})()
    r = TestClient(create_app(Full(), tok, "m", "ar")).post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"


def test_sigterm_finishes_the_request_in_flight_and_exits_0():
    proc, url = start("--queue", "4")
    lines = []
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 48, "temperature": 0,
                                                               "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and not lines:
                proc.send_signal(signal.SIGTERM)  # mid-stream
            if line.startswith("data:"):
                lines.append(line)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][5:])["usage"]["completion_tokens"] == 48
    assert proc.wait(timeout=60) == 0


def test_a_taken_port_is_one_line_and_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "specdiff", "serve", "--method", "ar", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "cannot listen on" in done.stderr


def test_a_missing_server_library_is_one_line_and_exit_2():
    hide = ("import importlib.util as u, sys; f = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'uvicorn' else f(n, *a); "
            "from specdiff.cli import main; sys.exit(main(['serve', '--method', 'ar', '--port', '0']))")
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "needs the uvicorn package" in done.stderr


def test_bench_serve_reports_latency_per_server(server, tmp_path):
    done = subprocess.run([sys.executable, "-m", "specdiff", "bench-serve", "--url", server, "--url", server, "--rate",
                           "20", "--requests", "6", "--max-tokens", "8", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    assert [s["method"] for s in result["servers"]] == ["ddtree", "ddtree"]
    for s in result["servers"]:
        assert s["summary"]["failed"] == 0 and s["summary"]["tokens"] == 6 * 8
        assert all(r["ttft_ms"] > 0 and r["per_token_ms"] > 0 for r in s["records"])
        assert 0 < s["summary"]["ttft_p50_ms"] <= s["summary"]["ttft_p99_ms"]
    assert "TTFT p50 ms" in done.stdout
    gone = subprocess.run([sys.executable, "-m", "specdiff", "bench-serve", "--url", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and "no specdiff server answers" in gone.stderr
