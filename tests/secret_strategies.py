"""Hypothesis strategies for the redaction property tests: random secrets, and every place an
identifier, a URL, a header, an `extra` / `engine_args` entry or a provider error can hold one.

Every secret starts with `Zq` and is at least ten characters long, and every run of letters
and digits in it after a separator starts with `Zq` too (the leak checks look for such runs: a
secret masked only in part). So no piece of one turns up in the surrounding text by chance (a
`Zq0/config` would find `config` in any log): finding one in an output means it leaked.
"""

from __future__ import annotations

import re
import string
import typing as t

from hypothesis import strategies as st

from rig_ray.generator.identifier import encode_value

_ALNUM = string.ascii_letters + string.digits
KEY_CHARS = _ALNUM + "-_.~+/="
"""An API key or a token68 credential (what follows `Bearer`)."""
PASSWORD_CHARS = _ALNUM + "-_.~!$&()*+;=:@%"
"""A URL password as users write them: sub-delims, ':' and '@' unescaped."""
QUERY_CHARS = _ALNUM + "-_.~%+/="


_RUN_START = re.compile(r"(?<=[^A-Za-z0-9%])(?=[A-Za-z0-9])")
"""Where a run of letters and digits starts after a separator (not a `%`: that is an escape)."""


def secret(chars: str = KEY_CHARS) -> st.SearchStrategy[str]:
    return st.text(alphabet=chars, min_size=8, max_size=32).map(
        lambda core: "Zq" + _RUN_START.sub("Zq", core)
    )


_CREDENTIAL_WORDS = ("key", "token", "secret", "password", "sig", "signature", "code", "auth")
query_names = st.one_of(
    st.sampled_from(
        ["key", "api_key", "apikey", "apiKey", "access_token", "code", "sig", "X-Amz-Signature",
         "X-Amz-Security-Token", "X-Goog-Signature", "subscription-key", "client_secret",
         "refresh_token", "id_token", "password", "jwt"]
    ),
    st.builds(
        lambda head, word, tail: f"{head}{word}{tail}",
        st.sampled_from(["", "x_", "my-", "client.", "Upstream_"]),
        st.sampled_from(_CREDENTIAL_WORDS),
        st.sampled_from(["", "_value", "-1", ".v2"]),
    ),
)  # fmt: skip
"""Names of query parameters that hold a credential."""
header_names = st.sampled_from(
    ["Authorization", "Proxy-Authorization", "X-Api-Key", "api-key", "X-Auth-Token",
     "x-goog-api-key", "Ocp-Apim-Subscription-Key", "X-Access-Token"]
)  # fmt: skip
schemes = st.sampled_from(["Bearer", "Basic", "Token", "Digest", "ApiKey", "SharedKey", "Custom"])
free_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=24).map(
    lambda text: " ".join(text.split())
)
"""Words around a secret (no control characters; one space between words)."""


class Placed(t.NamedTuple):
    """A text that holds `secret` somewhere."""

    text: str
    secret: str
    where: str


def header_value(name: str, scheme: str, value: str) -> str:
    return f"{scheme} {value}" if "authorization" in name.lower() else value


@st.composite
def placed_in_text(draw: st.DrawFn) -> Placed:
    """A secret in one of the places free text (an error, a log line) can hold it."""
    where = draw(
        st.sampled_from(["api_key", "userinfo", "query", "header", "header_repr", "json_body",
                         "bearer", "identifier_url", "engine_args", "extra_header",
                         "nested_repr"])
    )  # fmt: skip
    value = draw(secret(PASSWORD_CHARS if where == "userinfo" else KEY_CHARS))
    name, scheme = draw(header_names), draw(schemes)
    header = header_value(name, scheme, value)
    if where == "api_key":
        text = f"openai/gpt-4o,api_key={value},temperature=0.5"
    elif where == "userinfo":
        user = draw(st.sampled_from(["user", "me", "u.s-er", ""]))
        text = f"postgres://{user}:{value}@db.example:5432/x"
    elif where in ("query", "identifier_url"):
        query = f"{draw(query_names)}={draw(secret(QUERY_CHARS))}"
        value = query.split("=", 1)[1]
        url = f"https://proxy.example/v1/m:generateContent?alt=sse&{query}&n=2"
        text = url if where == "query" else f"openai/m,api_base={url},max_tokens=5"
    elif where == "header":
        text = f"{name}: {header}"
    elif where == "header_repr":
        text = f"headers {{'{name}': '{header}', 'Accept': 'application/json'}}"
    elif where == "nested_repr":  # an error's repr in a log line, quoted again (escaped quotes)
        inner = RuntimeError(f"headers {{'{name}': '{header}'}} \"")
        text = repr(inner) if draw(st.booleans()) else repr(repr(inner))
    elif where == "json_body":
        text = f'{{"error": {{"message": "bad", "headers": {{"{name}": "{header}"}}}}}}'
    elif where == "bearer":
        text = f"upstream said 401 for Bearer {value}"
    elif where == "engine_args":
        text = f"vllm!m,engine_args={encode_value({'hf_token': value, 'max_model_len': 64})}"
    else:
        text = f"openai/m,extra={encode_value({'headers': {name: header}, 'top_k': 2})}"
    before, after = draw(free_text), draw(free_text)
    return Placed(f"{before} {text} {after}".strip(), value, where)


class GeneratorSecrets(t.NamedTuple):
    """An identifier for a fake provider (`provider!model,...`) that holds four secrets."""

    identifier: str
    secrets: tuple[str, ...]


@st.composite
def generator_identifiers(draw: st.DrawFn, provider: str = "leaky") -> GeneratorSecrets:
    """An identifier with an api_key, a URL password, a credential query parameter and an
    `extra` header, each a fresh secret."""
    api_key = draw(secret())
    password = draw(secret(PASSWORD_CHARS.replace(";", "")))  # ';' splits identifier lists
    query_name, query_value = draw(query_names), draw(secret(QUERY_CHARS))
    name, scheme, credential = draw(header_names), draw(schemes), draw(secret())
    extra = {"headers": {name: header_value(name, scheme, credential)}}
    url = f"https://user:{password}@proxy.example/v1?{query_name}={query_value}"
    identifier = (
        f"{provider}!m,api_key={encode_value(api_key)},api_base={encode_value(url)},"
        f"extra={encode_value(extra)}"
    )
    return GeneratorSecrets(identifier, (api_key, password, query_value, credential))


def leaks(value: str, shown: str, source: str = "", piece: int = 4) -> list[str]:
    """The parts of the secret `value` that `shown` still holds: the whole of it, or any run
    of `piece` or more letters and digits of it (a secret masked only in part) that the
    `source` text it came from holds nowhere else."""
    rest = source.replace(value, "\0")
    pieces = [p for p in re.split(r"[^A-Za-z0-9]+", value) if len(p) >= piece and p not in rest]
    return [p for p in [value, *pieces] if p in shown]
