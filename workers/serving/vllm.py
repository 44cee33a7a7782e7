"""Answers from vLLM (PORTLLM_SERVE_BACKEND=vllm): one OpenAI-compatible server per live base,
every live patch on it as a LoRA adapter, requests batched by the engine.

The serve worker supervises the servers: each runs from vLLM's own environment
(PORTLLM_VLLM_PYTHON) on a free loopback port, at most PORTLLM_VLLM_MAX_SERVERS at once, and
stops after PORTLLM_VLLM_IDLE_S unused. A base named in PORTLLM_VLLM_URLS is served by a server
someone else runs. Patches load at run time (`POST /v1/load_lora_adapter`) and stay loaded for
the server's life. The worker holds no copy of any base; it reads the tokenizer only, so the
prompt's token ids are exactly those the local backend would feed its model.

Faults: a server that dies is started again and the pending answer retried once, then the
answer fails saying why; a patch the server refuses is answered by the local backend (logged,
and reported so `status` says so). Every wait has a deadline.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from portllm_core.settings import Settings
from workers.serving.backend import Served
from workers.serving.local import LocalBackend

log = logging.getLogger("portllm.vllm")

# Flags we add unless PORTLLM_VLLM_ARGS sets them: room for the ranks and adapter counts
# patches have in practice (vLLM's own defaults are rank 16 and 1 adapter per batch).
DEFAULT_FLAGS = {"--max-lora-rank": "64", "--max-loras": "4"}
HEALTH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 12


class EngineError(Exception):
    """An answer could not be served by vLLM; the message is shown to the asker."""


class EngineDown(EngineError):
    """The server stopped answering (its process exited, or the connection broke)."""


class AdapterRefused(EngineError):
    """The server would not load the patch (e.g. LoRA on the embeddings, or a rank too high)."""


class RequestRefused(EngineError):
    """The server answered the request with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"vLLM refused the request ({status}): {message}")
        self.status = status
        self.message = message


class Engine:
    """One vLLM server: ours (a child process) or someone else's (a URL)."""

    def __init__(self, label: str, url: str, process: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> None:
        self.label = label
        self.url = url.rstrip("/")
        self.process = process
        self.log_path = log_path
        self.ready = False
        self.adapters: set[str] = set()
        self.in_flight = 0  # answers streaming from it now: a busy server is never stopped for room
        self.last_used = time.monotonic()
        self.adapter_lock = threading.Lock()
        self._count_lock = threading.Lock()

    def busy(self, delta: int) -> None:
        with self._count_lock:
            self.in_flight += delta

    @property
    def supervised(self) -> bool:
        return self.process is not None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def why_down(self) -> str:
        if self.process is None:
            return f"the vLLM server at {self.url} does not answer"
        code = self.process.poll()
        tail = log_tail(self.log_path)
        # The last error it logged says more than its last line (often a request log).
        errors = [line for line in tail if "Error" in line or "error" in line]
        said = f": {(errors or tail)[-1].strip()[:300]}" if tail else ""
        return f"the vLLM server for {self.label} exited with code {code}{said} (log: {self.log_path})"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Its own process group: vLLM's engine core runs in children that must go with it.
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_GRACE_S)
        except ProcessLookupError:
            pass


def tethered(command: list[str]) -> list[str]:
    """The command, ended by SIGTERM when the thread that starts it ends: a serve worker killed
    outright (SIGKILL, the OOM killer) takes its servers, and the bases they hold, with it. Celery's
    pool threads live as long as the worker. Without util-linux's setpriv, the command as it is."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) is not installed: a serve worker killed outright leaves its vLLM servers running")
        return command
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    if path is None or not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout), parts.path.rstrip("/")


def call(url: str, method: str, path: str, body: dict | None = None, *, timeout: float) -> tuple[int, str]:
    """One request, (status, body text); connection failures raise OSError."""
    conn, prefix = _connection(url, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, prefix + path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from exc
    finally:
        conn.close()


def error_text(body: str) -> str:
    """vLLM's error message out of its JSON error body (or the body itself, cut short)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def stream_completion(url: str, body: dict, *, read_timeout: float, deadline: float) -> Iterator[str]:
    """Text pieces of a streamed /v1/completions; every read is bounded, and so is the whole."""
    conn, prefix = _connection(url, CONNECT_TIMEOUT_S)
    try:
        conn.request("POST", prefix + "/v1/completions", body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json"})
        conn.sock.settimeout(read_timeout)
        response = conn.getresponse()
        if response.status != 200:
            raise RequestRefused(response.status, error_text(response.read().decode(errors="replace")))
        while True:
            if time.monotonic() > deadline:
                raise EngineError(f"the answer took longer than {read_timeout:.0f} s and was cut off")
            line = response.readline()
            if not line:
                raise EngineDown("the stream ended before the answer did")
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise EngineError(f"vLLM: {error_text(data.decode())}")
            for choice in event.get("choices", []):
                if choice.get("text"):
                    yield choice["text"]
    except (OSError, http.client.HTTPException) as exc:
        raise EngineDown(f"the connection to vLLM broke ({exc})") from exc
    finally:
        conn.close()


class Engines:
    """The servers of one worker process, by base fingerprint; safe to use from many threads."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="portllm-vllm-reaper", daemon=True)
        self._reaper.start()

    def get(self, served: Served) -> Engine:
        """The base's server, started now (not waited for) when it has none or its one died."""
        with self._lock:
            engine = self._engines.get(served.fingerprint)
            if engine is not None and not engine.alive():
                log.warning("%s; starting it again", engine.why_down())
                del self._engines[served.fingerprint]
                engine = None
            if engine is None:
                engine = self._engines[served.fingerprint] = self._open(served)
            engine.last_used = self.clock()
            return engine

    def restart(self, engine: Engine, served: Served) -> Engine:
        """A fresh server in place of one that went down (ours only: someone else's is theirs)."""
        if not engine.supervised:
            raise EngineDown(engine.why_down())
        with self._lock:
            engine.stop()
            if self._engines.get(served.fingerprint) is engine:
                del self._engines[served.fingerprint]
        return self.get(served)

    def _open(self, served: Served) -> Engine:
        url = self.settings.vllm_urls.get(served.label)
        if url:
            return Engine(served.label, url)
        self._make_room()
        return self._start(served)

    def _make_room(self) -> None:
        """Stop the least recently used idle server when the limit is reached (lock held)."""
        ours = [e for e in self._engines.values() if e.supervised]
        if len(ours) < self.settings.vllm_max_servers:
            return
        idle = sorted((e for e in ours if e.in_flight == 0), key=lambda e: e.last_used)
        if not idle:
            raise EngineError(f"all {len(ours)} vLLM servers are busy with other bases; try again in a minute "
                              "(PORTLLM_VLLM_MAX_SERVERS sets how many may run)")
        victim = idle[0]
        log.info("stopping the vLLM server for %s to make room (PORTLLM_VLLM_MAX_SERVERS=%d)",
                 victim.label, self.settings.vllm_max_servers)
        victim.stop()
        self._engines = {k: e for k, e in self._engines.items() if e is not victim}

    def command(self, served: Served, port: int) -> list[str]:
        extra = shlex.split(self.settings.vllm_args)
        defaults = [part for flag, value in DEFAULT_FLAGS.items()
                    if not any(a == flag or a.startswith(flag + "=") for a in extra) for part in (flag, value)]
        return [self.settings.vllm_python, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(served.base_dir), "--served-model-name", served.label,
                "--host", "127.0.0.1", "--port", str(port), "--enable-lora", *defaults, *extra]

    def _start(self, served: Served) -> Engine:
        python = Path(self.settings.vllm_python)
        if not python.exists():
            raise EngineError(f"vLLM is not installed: {python} does not exist (run `make vllm`, or set "
                              "PORTLLM_VLLM_PYTHON to the python of an environment with vllm)")
        port = free_port()
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"vllm-{served.label.replace('/', '-')}.log"
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        command = self.command(served, port)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(tethered(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("starting a vLLM server for %s (pid %d) on 127.0.0.1:%d, log %s: %s", served.label, process.pid,
                 port, log_path, shlex.join(command))
        return Engine(served.label, f"http://127.0.0.1:{port}", process, log_path)

    def probe(self, engine: Engine) -> bool:
        """Whether the server is up now, asked once (a server someone else runs usually is)."""
        if not engine.ready and engine.alive():
            try:
                engine.ready = call(engine.url, "GET", "/health", timeout=HEALTH_TIMEOUT_S)[0] == 200
            except OSError:
                pass
        return engine.ready

    def wait_ready(self, engine: Engine) -> None:
        """Until the server answers its health check, it exits, or PORTLLM_VLLM_START_TIMEOUT_S passes."""
        if engine.ready:
            return
        started = time.monotonic()
        deadline = started + self.settings.vllm_start_timeout_s
        while not self._closed.is_set():
            if not engine.alive():
                raise EngineDown(engine.why_down())
            try:
                status, _ = call(engine.url, "GET", "/health", timeout=HEALTH_TIMEOUT_S)
                if status == 200:
                    if not engine.ready:
                        log.info("vLLM server for %s is up at %s (%.1f s)", engine.label, engine.url,
                                 time.monotonic() - started)
                    engine.ready = True
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"the vLLM server for {engine.label} did not come up within "
                                  f"{self.settings.vllm_start_timeout_s:.0f} s (PORTLLM_VLLM_START_TIMEOUT_S)")
            time.sleep(0.5)
        raise EngineError("the serve worker is stopping")

    def load_adapter(self, engine: Engine, served: Served) -> None:
        """The patch on the server, once per server life; AdapterRefused when vLLM says no."""
        if served.adapter in engine.adapters:
            return
        with engine.adapter_lock:
            if served.adapter in engine.adapters:
                return
            try:
                status, body = call(engine.url, "POST", "/v1/load_lora_adapter",
                                    {"lora_name": served.adapter, "lora_path": str(served.patch_dir)},
                                    timeout=self.settings.vllm_start_timeout_s)
            except OSError as exc:
                raise EngineDown(engine.why_down() if not engine.alive() else f"loading the patch failed: {exc}") from exc
            # Patch names are artifact ids: a name already there holds the same weights.
            if status != 200 and "already been loaded" not in body:
                if not engine.alive():
                    raise EngineDown(engine.why_down())
                raise AdapterRefused(f"vLLM refused patch {served.adapter} of {served.assistant} ({status}): "
                                     f"{error_text(body)}")
            engine.adapters.add(served.adapter)
            log.info("patch %s of %s loaded on the vLLM server for %s", served.adapter, served.assistant, engine.label)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.stop()

    def _reap(self) -> None:
        """Stop our servers nobody has used for PORTLLM_VLLM_IDLE_S."""
        interval = min(30.0, self.settings.vllm_idle_s / 4)
        while not self._closed.wait(interval):
            now = self.clock()
            with self._lock:
                idle = [(k, e) for k, e in self._engines.items()
                        if e.supervised and e.in_flight == 0 and now - e.last_used > self.settings.vllm_idle_s]
                for key, engine in idle:
                    del self._engines[key]
            for _, engine in idle:
                log.info("stopping the vLLM server for %s: unused for %.0f s", engine.label, now - engine.last_used)
                engine.stop()


class VllmBackend:
    """The serving backend on vLLM, falling back to `local` for patches vLLM refuses."""

    def __init__(self, settings: Settings, *,
                 on_local_fallback: Callable[[Served, str], None] | None = None) -> None:
        self.settings = settings
        self.engines = Engines(settings)
        self.local = LocalBackend()
        self.on_local_fallback = on_local_fallback
        self._refused: dict[tuple[str, str], str] = {}  # (base fingerprint, adapter) -> vLLM's reason
        self._tokenizers: dict[str, object] = {}
        self._lock = threading.Lock()

    def _refused_reason(self, served: Served) -> str | None:
        return self._refused.get((served.fingerprint, served.adapter))

    def _fall_back(self, served: Served, reason: str) -> None:
        with self._lock:
            first = (served.fingerprint, served.adapter) not in self._refused
            self._refused[(served.fingerprint, served.adapter)] = reason
        if first:
            log.warning("%s; %s is answered by the local backend instead", reason, served.assistant)
            if self.on_local_fallback is not None:
                self.on_local_fallback(served, reason)

    def _ready(self, served: Served) -> Engine:
        """The base's server up with the patch on it, started and restarted (once) as needed."""
        engine = self.engines.get(served)
        engine.busy(+1)  # a server being warmed is not idle: neither the reaper nor a new base stops it
        try:
            try:
                self.engines.wait_ready(engine)
                self.engines.load_adapter(engine, served)
            except EngineDown as exc:
                log.warning("%s; starting it again", exc)
                engine.busy(-1)
                engine = self.engines.restart(engine, served)
                engine.busy(+1)
                self.engines.wait_ready(engine)
                self.engines.load_adapter(engine, served)
        finally:
            engine.busy(-1)
            engine.last_used = self.engines.clock()
        return engine

    def warm(self, served: Served) -> None:
        if self._refused_reason(served):
            return self.local.warm(served)
        try:
            self._ready(served)
        except AdapterRefused as exc:
            self._fall_back(served, str(exc))
            self.local.warm(served)

    def answer(self, served: Served, turns) -> Iterator[str]:
        if self._refused_reason(served):
            yield from self.local.answer(served, turns)
            return
        body = self._request(served, turns)
        engine = self.engines.get(served)
        if not self.engines.probe(engine):
            yield f"(The engine for {served.label} is starting; the answer follows in a moment.)\n\n"
        engine.busy(+1)
        try:
            for attempt in (1, 2):
                said = False
                try:
                    self.engines.wait_ready(engine)
                    self.engines.load_adapter(engine, served)
                    for piece in self._pieces(engine, body):
                        said = True
                        yield piece
                    return
                except AdapterRefused as exc:
                    self._fall_back(served, str(exc))
                    yield from self.local.answer(served, turns)
                    return
                except RequestRefused as exc:
                    if exc.status != 404 or attempt == 2:
                        raise
                    # Not ours to know: someone restarted their server and the patch went with it.
                    log.warning("%s; loading patch %s again", exc, served.adapter)
                    engine.adapters.discard(served.adapter)
                except EngineDown as exc:
                    if attempt == 2 or not engine.supervised:
                        log.error("answer for %s on %s failed: %s", served.assistant, served.label, exc)
                        raise EngineError(f"the engine for {served.label} went down ({exc})") from exc
                    log.warning("%s; starting it again and retrying the answer", exc)
                    engine.busy(-1)
                    engine = self.engines.restart(engine, served)
                    engine.busy(+1)
                    if said:  # the retry starts over: say so rather than splice two answers
                        yield "\n\n(The engine restarted; answering again.)\n\n"
                    else:
                        yield f"(The engine for {served.label} restarted; the answer follows in a moment.)\n\n"
        finally:
            engine.busy(-1)
            engine.last_used = self.engines.clock()

    def _pieces(self, engine: Engine, body: dict) -> Iterator[str]:
        """The streamed answer as the local backend shows it: leading whitespace dropped."""
        started = False
        deadline = time.monotonic() + self.settings.answer_time_limit_s
        for piece in stream_completion(engine.url, body, read_timeout=self.settings.answer_time_limit_s,
                                       deadline=deadline):
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece

    def _request(self, served: Served, turns) -> dict:
        """The completion request: the token ids, budget and stops the local backend would use; greedy."""
        from portllm_engine.generate import prepare_prompt

        tokenizer, context = self._tokenizer(served)
        ids, budget, stops = prepare_prompt(tokenizer, turns, context, fmt=served.prompt)
        body = {"model": served.adapter, "prompt": ids, "max_tokens": budget, "temperature": 0.0}
        if stops:
            body["stop"] = stops
        return body

    def _tokenizer(self, served: Served):
        with self._lock:
            if served.fingerprint not in self._tokenizers:
                from portllm_engine.models import load_tokenizer

                config = json.loads((served.base_dir / "config.json").read_text())
                context = int(config.get("max_position_embeddings") or 2048)
                self._tokenizers[served.fingerprint] = (load_tokenizer(served.base_dir), context)
            return self._tokenizers[served.fingerprint]

    def close(self) -> None:
        self.engines.close()
