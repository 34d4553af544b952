"""A tiny OpenAI-compatible HTTP server for tests, built on the standard library only.

`OpenAIStub` serves `POST /v1/chat/completions` and `POST /v1/completions` on 127.0.0.1 (a free
port) from a daemon thread, and stops when its `with` block ends::

    with OpenAIStub() as stub:
        ...  # point a client at stub.base_url ("http://127.0.0.1:PORT/v1")
        stub.requests  # what arrived, in order of arrival

Behaviour, keyed on the last user message (chat) or the prompt (completions):

- the reply is ``"echo: <content>"``;
- content containing ``FAIL`` gets HTTP 400 with an OpenAI error body;
- content containing ``SLOW`` is answered after `slow_seconds`;
- content containing ``EMPTY`` gets a 200 answer with no choices;
- a `stop` string in the reply cuts it there (finish_reason "stop");
- `max_tokens` below the reply's word count truncates it to that many words (finish_reason
  "length");
- `stream: true` sends the reply as server-sent events, one word a chunk, `stream_delay`
  seconds apart, then a finish chunk, a usage chunk when `stream_options.include_usage` is
  set, and `data: [DONE]`; a client that hangs up mid-stream counts in `streams_aborted`.

Tokens are whitespace-separated words. Every request is recorded (path, JSON body, Authorization
header, arrival time on `time.monotonic()`), and the peak number of requests in flight at once is
tracked.
"""

from __future__ import annotations

import dataclasses
import http.server
import itertools
import json
import threading
import time
import typing as t

__all__ = ["OpenAIStub", "RecordedRequest"]

MAX_BODY_BYTES = 1 << 20
"""Largest request body the stub reads; bigger ones get HTTP 413."""


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it."""

    path: str
    body: t.Any
    """The parsed JSON body (None if it was not JSON)."""
    authorization: str | None
    """The Authorization header, e.g. "Bearer sk-test"."""
    arrived: float
    """`time.monotonic()` when the request's body had been read."""

    @property
    def api_key(self) -> str | None:
        """The bearer token of the Authorization header, if any."""
        if self.authorization and self.authorization.startswith("Bearer "):
            return self.authorization.removeprefix("Bearer ")
        return None


class _StubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _content_text(content: t.Any) -> str:
    """The text of a chat message's content: a str, or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _prompt_text(prompt: t.Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise _StubError(400, "the stub takes one prompt string per request", "invalid_prompt")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients expect
    timeout = 10  # seconds an idle keep-alive connection is kept open

    def log_message(self, format: str, *args: t.Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}
            )
        else:
            self._send_error(_StubError(404, f"no route GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        stub = self.server.stub
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send_error(_StubError(413, "bad or too large Content-Length", "too_large"))
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        stub._begin(
            RecordedRequest(
                path=self.path,
                body=body,
                authorization=self.headers.get("Authorization"),
                arrived=time.monotonic(),
            )
        )
        try:
            status, payload = 200, self._respond(body)
            if isinstance(body, dict) and body.get("stream") and status == 200:
                return self._send_stream(payload, body)
        except _StubError as error:
            status, payload = error.status, _error_body(error)
        finally:
            stub._end()
        self._send_json(status, payload)

    def _send_stream(self, payload: dict[str, t.Any], body: dict[str, t.Any]) -> None:
        """The reply as SSE chunks, one word each; the connection closes at the end."""
        stub = self.server.stub
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in _stream_events(payload, body):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                time.sleep(stub.stream_delay)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:  # the client hung up
            with stub._lock:
                stub.streams_aborted += 1

    def _respond(self, body: t.Any) -> dict[str, t.Any]:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise _StubError(404, f"no route POST {self.path}", "not_found")
        if not isinstance(body, dict):
            raise _StubError(400, "the body must be a JSON object", "invalid_json")
        chat = path == "/v1/chat/completions"
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _StubError(400, "'messages' must be a non-empty list", "invalid_messages")
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            content = _content_text(users[-1].get("content")) if users else ""
            prompt_words = sum(
                len(_content_text(m.get("content")).split())
                for m in messages
                if isinstance(m, dict)
            )
        else:
            content = _prompt_text(body.get("prompt"))
            prompt_words = len(content.split())
        if "FAIL" in content:
            raise _StubError(400, f"the stub refuses this request: {content!r}", "stub_fail")
        if "SLOW" in content:
            time.sleep(self.server.stub.slow_seconds)
        reply, finish_reason = _reply(content, body.get("stop"), body.get("max_tokens"))
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": len(reply.split()),
            "total_tokens": prompt_words + len(reply.split()),
        }
        number = next(self.server.ids)
        model = body.get("model") or "stub-model"
        created = int(time.time())
        if "EMPTY" in content:  # a malformed answer: no choices at all
            return {"id": f"stub-{number}", "object": "chat.completion", "choices": []}
        if chat:
            return {
                "id": f"chatcmpl-stub-{number}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_stub",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
        return {
            "id": f"cmpl-stub-{number}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "text": reply, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": usage,
        }

    def _send_json(self, status: int, payload: t.Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: _StubError) -> None:
        self._send_json(error.status, _error_body(error))


def _error_body(error: _StubError) -> dict[str, t.Any]:
    return {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": None,
            "code": error.code,
        }
    }


def _stream_events(payload: dict[str, t.Any], body: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """A whole reply cut into streamed chunks: one a word, then the finish, then the usage."""
    [choice] = payload["choices"]
    chat = "message" in choice
    text = choice["message"]["content"] if chat else choice["text"]
    base = {k: payload[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, finish: str | None = None) -> dict[str, t.Any]:
        if chat:
            delta = {} if piece is None else {"content": piece}
            one = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            one = {"index": 0, "text": piece or "", "finish_reason": finish}
        return {**base, "choices": [one]}

    words = text.split(" ")
    events = [chunk(word if i == 0 else f" {word}") for i, word in enumerate(words)]
    events.append(chunk(None, choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": payload["usage"]})
    return events


def _reply(content: str, stop: t.Any, max_tokens: t.Any) -> tuple[str, str]:
    reply = f"echo: {content}"
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str) and s]
    cuts = [reply.find(s) for s in stops if s in reply]
    if cuts:
        reply = reply[: min(cuts)]
    words = reply.split()
    if isinstance(max_tokens, int) and 0 <= max_tokens < len(words):
        return " ".join(words[:max_tokens]), "length"
    return reply, "stop"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    stub: OpenAIStub
    ids: t.Iterator[int]


class OpenAIStub:
    """An OpenAI-compatible server on 127.0.0.1, running while its `with` block runs."""

    def __init__(self, *, slow_seconds: float = 0.3, stream_delay: float = 0.0):
        self.slow_seconds = slow_seconds
        self.stream_delay = stream_delay
        """Seconds between two streamed chunks."""
        self.streams_aborted = 0
        """Streams whose client hung up before the end."""
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        if self._server is not None:
            raise RuntimeError("the stub is already running")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        server.ids = itertools.count(1)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="openai-stub",
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stub is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what tests check -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in order of arrival."""
        with self._lock:
            return list(self._requests)

    @property
    def peak_in_flight(self) -> int:
        """The most requests the stub was handling at once."""
        with self._lock:
            return self._peak

    def reset(self) -> None:
        """Forget the recorded requests and the peak."""
        with self._lock:
            self._requests.clear()
            self._peak = self._in_flight

    def _begin(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1
