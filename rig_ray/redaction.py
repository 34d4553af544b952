"""One way to keep secrets out of everything rig_ray shows or writes: `redact`.

A secret is an `api_key`, the password of any URL (`https://user:p@ss@host`: up to the last
`@` before the host), a URL query parameter whose name looks like a credential (`key`, `code`,
`sig`, `access_token`, `X-Amz-Signature`, ...), whatever follows an `Authorization` header
name (any scheme: `Token X`, `Digest ...`), a bearer or basic credential, or the value of any
key that looks like a credential (`token`, `secret`, `password`, `authorization`, `api-key`,
`x-api-key`, `hf_token`, ...) in a dict such as `extra`, `engine_args` or headers, in a JSON or
dict repr (escaped quotes too) or a `key=value` pair. `redact` replaces each with `***` in
strings (free text, URLs, identifier strings, including their `base64:` JSON values), dicts
and lists. `scrub` also masks the secrets a generator holds (its `api_key`, the secrets of its
identifier) wherever they appear, named or not. Errors, the CLI's lines, logs, the console,
the batch output's `generator` and `error` columns, the batch manifest and Serve's logs all go
through them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import traceback
import typing as t

from rig_ray.terminal import printable

MASK = "***"
"""What a secret is replaced with."""

_SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "credential",
        "credentials",
        "authorization",
        "auth",
        "cookie",
        "apikey",
        "bearer",
        "signature",
    }
)
_KEY_OWNERS = frozenset({"api", "access", "private", "secret", "auth", "subscription", "account"})

# The password of a URL's userinfo, up to the last '@' before the host: `user:p@ss@host`.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:'\"]*:)(?P<value>[^\s/?#'\"]*)@"
    r"(?=[^\s@/?#'\"]*(?:[/?#\s'\",]|$))"
)
# A query parameter: `?key=...`, `&sig=...` (in a URL or a bare path such as `m:gen?key=`).
_QUERY = re.compile(
    r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-\[\]%]+)=(?P<value>[^&#\s'\"<>,;)\]}]+)"
)
# Names that hold a credential in a query string besides those `is_secret_key` knows.
_QUERY_SECRET_WORDS = frozenset({"key", "keys", "code", "sig", "hmac", "jwt", "session"})
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{4,})")
# key=value, key: value, "key": "value", 'key': 'value' (a JSON or dict repr, a header line)
# Quotes may come escaped (`\'key\': \'value\'`: a message's repr inside a repr).
_PAIR = re.compile(
    r"""(?P<key>\\*["']?(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)\\*["']?)(?P<sep>\s*[:=]\s*)"""
    r"""(?P<value>(?P<esc>\\+)(?P<q>["'])(?:(?!(?P=esc)(?P=q)).)*(?P=esc)(?P=q)"""
    r"""|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;}\])'"]+)"""
)
# What follows an unquoted authorization value's first word: the credential after its scheme.
_SCHEME_CREDENTIAL = re.compile(r"[ \t]+[^\s,;}\])'\"]+")
_BASE64_VALUE = re.compile(r"base64:(?P<data>[A-Za-z0-9_\-]+)")


def is_secret_key(name: str) -> bool:
    """Whether a key (a field, a dict key, a header) names a credential."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    words = [word for word in re.split(r"[_\-.\s]+", spaced.lower()) if word]
    if any(word in _SECRET_WORDS for word in words):
        return True
    return any(
        word in ("key", "keys") and index > 0 and words[index - 1] in _KEY_OWNERS
        for index, word in enumerate(words)
    )


@t.overload
def redact(value: str) -> str: ...
@t.overload
def redact(value: t.Mapping[str, t.Any]) -> dict[str, t.Any]: ...
@t.overload
def redact(value: t.Any) -> t.Any: ...
def redact(value: t.Any) -> t.Any:
    """`value` with every secret in it replaced by `MASK`.

    Strings (free text, URLs, identifiers), dicts (recursively: a credential-looking key keeps
    its key and loses its value), lists and tuples; other values come back as they are.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, t.Mapping):
        return {key: MASK if _masks(key, item) else redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


def scrub(text: str, *sources: t.Any) -> str:
    """`text` redacted, with any secret value found in `sources` (identifiers, dicts, and
    pydantic models such as a generator, whose `api_key`, URLs, `extra` and `engine_args`
    count) masked wherever it appears: an error that quotes a bad value repeats no key."""
    for secret in sorted(_secrets_in(sources), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return redact(text)


def error_text(error: BaseException, *sources: t.Any, with_traceback: bool = False) -> str:
    """`Type: message` of `error` (and its traceback, chained causes included, when asked),
    scrubbed with `sources`: what a log or a console may show of it."""
    if with_traceback:
        text = "".join(traceback.format_exception(error)).rstrip()
    else:
        message = " ".join(str(error).split())
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return scrub(text, *sources)


def scrubbed_error(error: BaseException, *sources: t.Any) -> BaseException:
    """`error` itself when its text holds no secret of `sources`, else an error of the same
    type (a `RuntimeError` when that type cannot be made from a message) with the scrubbed
    text and no cause: raise it `from None`, so no traceback repeats the original."""
    text = str(error)
    cleaned = scrub(text, *sources)
    if cleaned == text:
        return error
    try:
        replacement = type(error)(cleaned)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {cleaned}")
    return replacement if str(replacement) == cleaned else RuntimeError(cleaned)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (with its arguments filled in) and
    its traceback, scrubbed with `sources` too (see `scrub`), with its control characters
    written as escapes (`rig_ray.terminal.printable`)."""

    def __init__(self, *sources: t.Any) -> None:
        super().__init__()
        self.sources = sources

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += "\n" + error_text(record.exc_info[1], with_traceback=True)
            record.exc_info = record.exc_text = None
        cleaned = printable(scrub(message, *self.sources))
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def redact_logs(*names: str) -> None:
    """Put a `RedactingFilter` on the handlers that print log records to the console: the
    root's, Python's last-resort handler, and those of the loggers `names` (default: Ray's).
    (A batch job's console, `rig_ray.batch.console.job_console`, also scrubs with the job's
    own secrets while it runs.)"""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for name in names or ("ray", "ray.data", "ray.serve"):
        handlers.extend(logging.getLogger(name).handlers)
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _masks(key: t.Any, item: t.Any) -> bool:
    return isinstance(key, str) and is_secret_key(key) and item not in (None, "", MASK)


def _redact_text(text: str) -> str:
    text = _BASE64_VALUE.sub(_redact_base64, text)
    out, end = [], 0
    for start, stop in _merged(_secret_spans(text)):
        out += [text[end:start], MASK]
        end = stop
    return "".join([*out, text[end:]])


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the secrets of `text` are: URL passwords, credential query parameters, bearer
    and basic credentials, and the values of credential-named pairs (an authorization's
    value with the credential after its scheme)."""
    spans = [m.span("value") for m in _URL_PASSWORD.finditer(text) if m.group("value")]
    position = 0
    while query := _QUERY.search(text, position):
        # Not past a value that is no secret: a password such as `p&w=` in the userinfo reads
        # as a parameter whose value runs on over the real query (`?key=...`).
        if _is_query_secret(query["name"]):
            spans.append(query.span("value"))
            position = query.end()
        else:
            position = query.start("value")
    spans += [m.span("value") for m in _BEARER.finditer(text)]
    position = 0
    while match := _PAIR.search(text, position):
        # A pair's value is searched too: a quoted message may hold `api_key=...` itself.
        position = match.start("value")
        if not is_secret_key(match.group("name")) or match.group("value").strip("\"'") == MASK:
            continue
        start, stop = match.span("value")
        if match.group("q"):  # \'escaped\' (once or more)
            width = len(match.group("esc")) + 1
            start, stop = start + width, stop - width
        elif text[start] in "'\"":
            start, stop = start + 1, stop - 1
        elif _is_authorization(match.group("name")) and (
            after := _SCHEME_CREDENTIAL.match(text, stop)
        ):
            stop = after.end()
        if text[start:stop] not in ("", MASK):
            spans.append((start, stop))
        position = stop
    return spans


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _is_query_secret(name: str) -> bool:
    words = re.split(r"[_\-.\[\]]+|%5[Ff]", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return is_secret_key(name) or any(word in _QUERY_SECRET_WORDS for word in words)


def _is_authorization(name: str) -> bool:
    return any(word in ("authorization", "auth") for word in re.split(r"[_\-.]+", name.lower()))


def _redact_base64(match: re.Match[str]) -> str:
    decoded = _decode_base64(match.group("data"))
    if decoded is None:
        return match.group(0)
    cleaned = redact(decoded)
    if cleaned == decoded:
        return match.group(0)
    payload = json.dumps(cleaned, sort_keys=True, separators=(",", ":"))
    return "base64:" + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_base64(data: str) -> t.Any:
    try:
        return json.loads(base64.urlsafe_b64decode((data + "=" * (-len(data) % 4)).encode()))
    except (binascii.Error, ValueError):
        return None


def _secrets_in(sources: t.Iterable[t.Any]) -> set[str]:
    """The secret values themselves, as written in `sources`."""
    found: set[str] = set()
    for source in sources:
        if isinstance(source, str):
            found |= {source[start:stop] for start, stop in _secret_spans(source)}
            for match in _BASE64_VALUE.finditer(source):
                decoded = _decode_base64(match.group("data"))
                if decoded is not None:
                    found |= _secrets_in([decoded])
        elif isinstance(source, t.Mapping):
            for key, item in source.items():
                if _masks(key, item):
                    found.add(str(item))
                    found.add((str(item).split() or [""])[-1])  # the credential after a scheme
                found |= _secrets_in([item])
        elif isinstance(source, list | tuple):
            found |= _secrets_in(source)
        elif callable(getattr(source, "model_dump", None)):  # a generator, its params
            found |= _secrets_in([_dumped(source)])
    return {secret for secret in found if len(secret) >= 3 and secret != MASK}


def _dumped(model: t.Any) -> t.Any:
    try:
        return model.model_dump(mode="json")
    except Exception:  # a field JSON cannot hold: the plain dump still has the strings
        return model.model_dump()
