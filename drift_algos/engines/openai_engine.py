"""Generation on OpenAI-compatible servers over HTTP (``--engine openai``): vLLM, SGLang, llama.cpp, ...

drift renders each prompt itself, with the chat template of the ``--model`` tokenizer followed by the reply prefix,
and sends its token ids to ``/v1/completions``: the server samples from exactly the prompt an in-process engine
would feed the model, so a trajectory is token for token one that ``--engine transformers`` could have sampled.
With ``api="chat"`` the conversation goes to ``/v1/chat/completions`` instead and the server renders it (the reply
prefix is then sent as an unfinished assistant message, see :class:`OpenAIConfig`).

What comes back from the server, per sample: the prompt and completion token ids and each sampled token's
log-probability (under the model, before temperature: vLLM's default ``raw_logprobs``) where the server gives them;
vLLM does, through its ``return_token_ids`` extension and the standard ``logprobs`` field. The text is then the ids
decoded by the tokenizer, cut after the first stop string, and a reply that ended on an EOS (or another stop token)
loses it, exactly as the in-process engines report it. A server that returns no token ids gives its text (a stop
string it dropped is put back from vLLM-style ``stop_reason``) re-encoded with the tokenizer, which can split
differently from what was sampled, and the prompt ids drift sent; one that returns no log-probs leaves
``Completion.logprobs`` as ``None``. Online training needs exact ids: it runs in-process anyway (the servers cannot
take the trained weights).

Requests: one per sample, each with its own ``seed`` (``derive_seed(seed_i, k)`` as every drift engine uses), so a
seeded sample does not depend on what else is in flight, where the server honours seeds and computes batch-invariantly.
At most ``concurrency`` requests are in flight per server; each goes to the least busy server that is up. A request
that meets a 408, 429 or 5xx answer, a refused or dropped connection or a timeout is retried with exponential backoff
and jitter, up to ``max_retries`` times and for at most ``retry_budget_s`` seconds after its first failure; a server
that refuses connections, times out or answers 502/503/504 is marked down and skipped, and after a cooldown (1 s,
doubling to 10 s) one request probes it again. A request that still fails makes the whole call raise
:class:`~drift_algos.engines.base.GenerationFailed` (no partial batch is ever returned).

Why threads, not asyncio: :meth:`Engine.generate` is a synchronous call made from synchronous code (the rollout
agent, evaluation, a notebook, where a running event loop makes ``asyncio.run`` fail); the threads only wait on
sockets, which releases the GIL, and their number is bounded by the servers' concurrency; ``httpx.Client`` shares one
connection pool between them. The retry loop then reads top to bottom as plain code.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields

from drift_algos.engines.base import (
    Completion,
    Engine,
    EngineUnavailable,
    GenerationFailed,
    Message,
    SamplingParams,
    cut_at_stop,
    prefixes_for,
    sample_seeds,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'drift-rl[openai]' (it needs httpx)"

_RETRY_STATUS = {408, 429}
"""Answers below 500 worth retrying: the server timed out reading the request, or asks us to slow down."""
_DOWN_STATUS = {502, 503, 504}
"""Answers that say the server (or the proxy before it) cannot serve now: it is skipped for a while."""
_FAILED_FINISH = {"abort", "error"}
"""Finish reasons (vLLM's) of a request the server gave up on: retried like a failed attempt."""
_COOLDOWN_S = (1.0, 10.0)
"""A server marked down is skipped for 1 s, doubling at each failed probe up to 10 s."""


@dataclass
class OpenAIConfig:
    """Where the servers are and how to talk to them (``--base-url``, ``--api-key-env``, ``--engine-arg``)."""

    base_urls: tuple[str, ...]
    """Server addresses, each ending in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``); requests share them."""
    api: str = "completions"
    """``completions``: drift renders the prompt and sends its token ids to ``/v1/completions`` (token-identical to
    an in-process engine). ``chat``: the messages go to ``/v1/chat/completions`` and the server's chat template renders
    them; a reply prefix is sent as a last, unfinished assistant message with vLLM's ``continue_final_message`` (a
    server without it treats the prefix as a finished turn and starts a new reply after it)."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer token sent to every server (``None``: none)."""
    served_model: str | None = None
    """The model name the servers serve (``model`` of each request); ``None``: the only one a server lists at
    ``/v1/models`` (or the one whose name is the ``--model`` spec or its local path)."""
    concurrency: int = 64
    """Requests in flight per server (each is one sample)."""
    timeout_s: float = 600.0
    """Seconds one attempt may take (a long reply from a busy server takes minutes); then it is retried."""
    connect_timeout_s: float = 10.0
    """Seconds to open a connection."""
    max_retries: int = 10
    """Retries of one request after failed attempts (waiting for a server that is down does not count)."""
    retry_budget_s: float = 600.0
    """Seconds a request keeps retrying after its first failure (backoff and waiting for a server to come back);
    then it fails for good."""
    backoff_s: float = 0.5
    """First retry's delay; it doubles at each retry (with jitter: between half and all of it)."""
    max_backoff_s: float = 30.0
    """Longest delay between two attempts (a ``Retry-After`` answer is honoured up to this)."""
    prompt_ids: bool = True
    """Send the prompt as token ids (vLLM, SGLang and llama.cpp take them); ``False``: as text, which the server
    tokenizes (``completions`` only; with vLLM's extensions no special tokens are added)."""
    vllm_extensions: bool = True
    """Ask for vLLM's extra fields (``return_token_ids``, ``include_stop_str_in_output``, ``top_k=0``,
    ``repetition_penalty=1``, ...), which other servers ignore; ``False`` sends only standard OpenAI fields."""

    def __post_init__(self) -> None:
        self.base_urls = tuple(url.rstrip("/") for url in self.base_urls)
        if not self.base_urls:
            raise ValueError("--base-url: the openai engine needs at least one server address (e.g. "
                             "http://127.0.0.1:8000/v1)")
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--base-url: {url!r} is not an http:// or https:// address")
            if url.endswith("/completions"):
                raise ValueError(f"--base-url: {url!r} names an endpoint; give the address that ends in /v1 "
                                 "(--engine-arg api=chat picks /chat/completions)")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ValueError("--base-url: the same server is given twice")
        if self.api not in ("completions", "chat"):
            raise ValueError(f"api must be completions or chat, got {self.api!r}")
        for name in ("concurrency", "timeout_s", "connect_timeout_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_retries", "retry_budget_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_engine_config(cls, cfg) -> OpenAIConfig:
        """From an :class:`~drift_algos.engines.EngineConfig`: its servers, API key variable and options."""
        names = {f.name for f in fields(cls)} - {"base_urls", "api_key"}
        unknown = sorted(set(cfg.options) - names)
        if unknown:
            raise ValueError(f"--engine-arg: the openai engine has no setting '{unknown[0]}' "
                             f"(settings: {', '.join(sorted(names))})")
        api_key = None
        if cfg.api_key_env is not None:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ValueError(f"--api-key-env: environment variable {cfg.api_key_env} is not set")
        try:
            return cls(base_urls=tuple(cfg.base_urls), api_key=api_key, **cfg.options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--engine-arg: {err}") from None


@dataclass
class ServerStats:
    """What one server has done for this engine so far."""

    url: str
    """The server's address."""
    completed: int
    """Requests it answered successfully."""
    failed_attempts: int
    """Attempts on it that failed (retried on it or elsewhere)."""
    down: bool
    """Whether it is being skipped right now."""


class _Server:
    def __init__(self, url: str):
        self.url = url
        self.in_flight = 0
        self.down_until = 0.0
        self.strikes = 0
        """Failed probes in a row while down (0: up)."""
        self.completed = 0
        self.failed_attempts = 0


class _Pool:
    """Which server takes the next attempt: the least busy one that is up and has a free slot.

    A server that is down takes no attempt until its cooldown ends, then one at a time (a probe) until one succeeds.
    """

    def __init__(self, urls: Sequence[str], concurrency: int):
        self.servers = [_Server(url) for url in urls]
        self.concurrency = concurrency
        self.cond = threading.Condition()

    def acquire(self, abort: threading.Event, deadline: float | None,
                budget_s: float) -> tuple[_Server | None, float | None]:
        """A server with a free slot (``None`` if ``abort`` is set or ``deadline`` passes while all are down) and
        the request's deadline: set now if every server is down and the request had none yet."""
        with self.cond:
            while not abort.is_set():
                now = time.monotonic()
                free = [s for s in self.servers if s.down_until <= now
                        and s.in_flight < (1 if s.strikes else self.concurrency)]
                if free:
                    server = min(free, key=lambda s: (s.in_flight, s.completed))
                    server.in_flight += 1
                    return server, deadline
                wait = 0.5  # wake up now and then to see ``abort``
                if all(s.down_until > now for s in self.servers):
                    deadline = deadline if deadline is not None else now + budget_s
                    if now >= deadline:
                        return None, deadline
                    wait = min(wait, min(s.down_until for s in self.servers) - now, deadline - now)
                self.cond.wait(max(wait, 0.001))
            return None, deadline

    def succeeded(self, server: _Server) -> None:
        """Return ``server``'s slot after an answer: it is up."""
        with self.cond:
            server.in_flight -= 1
            if server.strikes:
                logger.warning("server %s is back", server.url)
            server.completed += 1
            server.strikes = 0
            server.down_until = 0.0
            self.cond.notify_all()

    def failed(self, server: _Server, *, down: bool) -> None:
        """Return ``server``'s slot after a failed attempt; ``down``: it seems gone or overloaded, skip it a while."""
        with self.cond:
            server.in_flight -= 1
            server.failed_attempts += 1
            now = time.monotonic()
            # Of many attempts failing together (a server dies under load), only the first is a strike.
            if down and server.down_until <= now:
                server.strikes += 1
                server.down_until = now + min(_COOLDOWN_S[1], _COOLDOWN_S[0] * 2 ** (server.strikes - 1))
                if server.strikes == 1:
                    logger.warning("server %s is down; skipping it (probing again every %.0f-%.0f s)",
                                   server.url, *_COOLDOWN_S)
            self.cond.notify_all()

    def returned(self, server: _Server) -> None:
        """Return ``server``'s slot unused."""
        with self.cond:
            server.in_flight -= 1
            self.cond.notify_all()


class _Failed(Exception):
    """A request failed for good."""


class _Aborted(Exception):
    """A request stopped because another of its call failed for good."""


class OpenAIEngine(Engine):
    """Samples from OpenAI-compatible servers; see the module docstring for what it sends and what it gets back.

    ``tokenizer`` is the ``--model`` tokenizer: it renders the prompts (and must be the served model's).
    """

    name = "openai"
    remote = True

    def __init__(self, cfg: OpenAIConfig, tokenizer, *, model_spec: str | None = None):
        httpx = _import_httpx()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model_spec = model_spec
        self._pool = _Pool(cfg.base_urls, cfg.concurrency)
        slots = cfg.concurrency * len(cfg.base_urls)
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
            headers={"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None,
        )
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="drift-openai")
        self._model_name: str | None = cfg.served_model
        self._model_lock = threading.Lock()
        self._rng = random.Random()  # jitter only: it never touches what is sampled
        self._eos_id = tokenizer.eos_token_id

    @classmethod
    def check_config(cls, cfg) -> None:
        _import_httpx()
        OpenAIConfig.from_engine_config(cfg)

    @classmethod
    def from_config(cls, cfg, model: str, *, adapter: str | None = None, loaded: tuple | None = None) -> OpenAIEngine:
        if adapter is not None:
            raise ValueError("the openai engine samples what its servers serve and cannot load an adapter: serve it "
                             "(vLLM: --enable-lora --lora-modules NAME=DIR) and pass --engine-arg served_model=NAME")
        openai_cfg = OpenAIConfig.from_engine_config(cfg)
        if loaded is not None:
            tokenizer = loaded[1]
        else:
            from drift_algos.models import load_tokenizer

            tokenizer = load_tokenizer(model)
        return cls(openai_cfg, tokenizer, model_spec=model)

    # Prompts ---------------------------------------------------------------------------------------------------

    def render(self, conversation: Sequence[Message], reply_prefix: str = "") -> str:
        """The prompt text, as the in-process engines render it: chat template, generation prompt, reply prefix."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return text + reply_prefix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # Generation ------------------------------------------------------------------------------------------------

    def generate(self, conversations, params: SamplingParams, *, reply_prefix: str | Sequence[str] = "",
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        prefixes = prefixes_for(reply_prefix, len(conversations))
        per_sample = sample_seeds(params, seeds, len(conversations))  # [conversation][k]
        prompts = [self.render(c, p) for c, p in zip(conversations, prefixes, strict=True)]
        prompt_ids = [self.encode(p) for p in prompts]
        if not conversations:
            return []
        try:
            model = self.served_model()
        except _Failed as err:
            raise GenerationFailed(f"the openai engine could not list the served models: {err}", failed=1,
                                   total=1) from None
        abort = threading.Event()
        futures = {}
        for i, conversation in enumerate(conversations):
            for k in range(params.n):
                seed = per_sample[i][k] if per_sample is not None else None
                body = self._body(model, conversation, prefixes[i], prompts[i], prompt_ids[i], params, seed)
                futures[self._executor.submit(self._request, body, prompt_ids[i], params, abort)] = (i, k)
        results: list[list[Completion | None]] = [[None] * params.n for _ in conversations]
        failures: list[str] = []
        for future in as_completed(futures):
            i, k = futures[future]
            try:
                results[i][k] = future.result()
            except _Failed as err:
                failures.append(str(err))
                abort.set()  # the call fails anyway: stop the other requests' retries
            except _Aborted:
                pass
        if failures:
            raise GenerationFailed(
                f"the openai engine could not complete {len(failures)} of {len(futures)} requests: {failures[0]}",
                failed=len(failures), total=len(futures))
        return results  # type: ignore[return-value]  # every slot is filled when nothing failed

    def served_model(self) -> str:
        """The ``model`` name requests carry: :attr:`OpenAIConfig.served_model`, or found at ``/v1/models``."""
        with self._model_lock:
            if self._model_name is None:
                listed = [m["id"] for m in self._send("GET", "/models", None, threading.Event()).get("data", [])]
                wanted = {self.model_spec} if self.model_spec else set()
                if self.model_spec:
                    try:
                        from drift_algos.models import local_path

                        wanted.add(local_path(self.model_spec))
                    except LookupError:
                        pass
                matching = [m for m in listed if m in wanted]
                if len(matching) == 1:
                    self._model_name = matching[0]
                elif len(listed) == 1:
                    self._model_name = listed[0]
                    if self.model_spec:
                        logger.warning("the server serves %s; drift renders prompts with the tokenizer of %s: they "
                                       "must be the same model", listed[0], self.model_spec)
                else:
                    names = ", ".join(listed[:5]) or "none"
                    raise ValueError(f"{self.cfg.base_urls[0]}/models lists {len(listed)} models ({names}): pick one "
                                     "with --engine-arg served_model=NAME")
            return self._model_name

    def server_stats(self) -> list[ServerStats]:
        """Per server: requests completed, failed attempts, and whether it is skipped now."""
        now = time.monotonic()
        with self._pool.cond:
            return [ServerStats(s.url, s.completed, s.failed_attempts, s.down_until > now) for s in self._pool.servers]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # Requests --------------------------------------------------------------------------------------------------

    def _body(self, model: str, conversation: Sequence[Message], prefix: str, prompt: str, ids: list[int],
              params: SamplingParams, seed: int | None) -> dict:
        body: dict = {"model": model, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                      "top_p": params.top_p, "n": 1}
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        vllm = self.cfg.vllm_extensions
        if vllm:
            # Sample from the model's own distribution whatever the server's generation config says, as drift's
            # in-process engines do; keep stop strings in the text; return the token ids.
            body.update(top_k=0, min_p=0.0, repetition_penalty=1.0, include_stop_str_in_output=True,
                        return_token_ids=True, skip_special_tokens=True)
        if self.cfg.api == "chat":
            messages = [dict(m) for m in conversation]
            if prefix:
                messages.append({"role": "assistant", "content": prefix})
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = messages
            if params.logprobs:
                body.update(logprobs=True, top_logprobs=0)
        else:
            body["prompt"] = ids if self.cfg.prompt_ids else prompt
            if vllm and not self.cfg.prompt_ids:
                body["add_special_tokens"] = False  # the chat template already holds them
            if params.logprobs:
                body["logprobs"] = 0  # the sampled token's log-prob, no alternatives
        return body

    def _request(self, body: dict, prompt_ids: list[int], params: SamplingParams, abort: threading.Event) -> Completion:
        path = "/chat/completions" if self.cfg.api == "chat" else "/completions"
        return self._completion(self._send("POST", path, body, abort), prompt_ids, params)

    def _send(self, method: str, path: str, body: dict | None, abort: threading.Event) -> dict:
        """One request's answer (JSON), retried as the module docstring says; raises :class:`_Failed` or
        :class:`_Aborted`."""
        httpx = _import_httpx()
        cfg = self.cfg
        deadline: float | None = None  # set at the first failure
        retries = 0
        error = "every server was down"
        while True:
            server, deadline = self._pool.acquire(abort, deadline, cfg.retry_budget_s)
            if abort.is_set():
                if server is not None:
                    self._pool.returned(server)
                raise _Aborted
            if server is None:
                raise _Failed(f"no server was up for {cfg.retry_budget_s:g} s (last error: {error})")
            url = server.url + path
            retry_after = None
            down = True
            try:
                response = self._client.request(method, url, json=body)
            except httpx.TimeoutException:
                error = f"{url}: no answer within {cfg.timeout_s:g} s"
            except httpx.TransportError as err:
                error = f"{url}: {type(err).__name__}: {err}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        error = f"{url}: answer is not JSON ({response.text[:80]!r})"
                    else:
                        finish = _finish_reason(data)
                        if finish in _FAILED_FINISH:
                            error = f"{url}: the server ended the request ({finish})"
                        else:
                            self._pool.succeeded(server)
                            return data
                else:
                    error = f"{url}: HTTP {status}: {_error_message(response)}"
                    down = status in _DOWN_STATUS
                    if status not in _RETRY_STATUS and status < 500:
                        self._pool.failed(server, down=False)
                        raise _Failed(error)  # the request itself is wrong: retrying cannot help
                    retry_after = _retry_after(response)
            self._pool.failed(server, down=down)
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + cfg.retry_budget_s
            if retries >= cfg.max_retries:
                raise _Failed(f"{error} (after {retries} retries)")
            delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** retries)
            delay = delay / 2 + self._rng.uniform(0, delay / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, cfg.max_backoff_s))
            if now + delay > deadline:
                raise _Failed(f"{error} (retry budget of {cfg.retry_budget_s:g} s spent after {retries} retries)")
            retries += 1
            logger.info("%s; retry %d/%d in %.1f s", error, retries, cfg.max_retries, delay)
            if abort.wait(delay):
                raise _Aborted

    def _completion(self, data: dict, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """A :class:`Completion` from one answer, as the in-process engines would report it."""
        choice = data["choices"][0]
        if self.cfg.api == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            content = (choice.get("logprobs") or {}).get("content")
            logprobs = [float(t["logprob"]) for t in content] if content is not None else None
            served_prompt = data.get("prompt_token_ids")
        else:
            text = choice.get("text") or ""
            token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
            logprobs = [float(x) for x in token_logprobs] if token_logprobs is not None else None
            served_prompt = choice.get("prompt_token_ids")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        stop_reason = choice.get("stop_reason")
        token_ids = choice.get("token_ids")
        if token_ids is not None:
            token_ids = [int(t) for t in token_ids]
            # vLLM keeps the EOS (or other stop token) that ended the reply among the ids, and with
            # include_stop_str_in_output its text too; drift's engines keep neither.
            by_token = finish == "stop" and not isinstance(stop_reason, str) and token_ids
            if by_token and (token_ids[-1] == self._eos_id or isinstance(stop_reason, int)):
                token_ids = token_ids[:-1]
                if logprobs is not None and len(logprobs) > len(token_ids):
                    logprobs = logprobs[: len(token_ids)]
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)  # as the in-process engines decode
        elif isinstance(stop_reason, str) and stop_reason in params.stop and not text.endswith(stop_reason):
            text += stop_reason  # a server that drops the stop string it stopped at (drift keeps it)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            finish = "stop"
        if token_ids is None:
            token_ids = self.encode(text)  # no ids from the server: the text re-encoded
        if not params.logprobs:
            logprobs = None
        ids = [int(t) for t in served_prompt] if served_prompt is not None else list(prompt_ids)
        return Completion(text=text, token_ids=token_ids, logprobs=logprobs, prompt_tokens=len(ids),
                          finish_reason=finish, prompt_token_ids=ids)


def _import_httpx():
    try:
        import httpx
    except ImportError:
        raise EngineUnavailable(f"the openai engine needs the httpx package: {INSTALL_HINT}") from None
    return httpx


def _error_message(response) -> str:
    """The server's own one-line reason, from an OpenAI-style ``{"error": {"message": ...}}`` body or the text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message).strip().splitlines()[0][:200] if str(message).strip() else response.reason_phrase


def _finish_reason(data) -> str | None:
    try:
        return data["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None  # not a completion (e.g. /models)


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from inference servers; the backoff applies
