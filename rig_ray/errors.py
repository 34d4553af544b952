"""Every error rig_ray raises on purpose: `RigRayError` and its subclasses.

Each subclass carries the offending value as an attribute, so callers can react without parsing
message text.
"""

from __future__ import annotations

import difflib
import typing as t


class RigRayError(Exception):
    """Base class of every error that rig_ray raises on purpose.

    Errors pickle with their attributes, so they survive the trip back from a Ray worker.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[RigRayError], args: tuple[object, ...], state: dict) -> RigRayError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidGeneratorError(RigRayError, ValueError):
    """An identifier string, or a generator setting in it, is not valid.

    `identifier` is the whole string and `part` the piece of it at fault (a key, a pair, a
    provider), when one piece is.
    """

    def __init__(self, message: str, *, identifier: str | None = None, part: str | None = None):
        from rig_ray.redaction import redact, scrub

        self.identifier = redact(identifier) if isinstance(identifier, str) else identifier
        self.part = scrub(part, identifier) if isinstance(part, str) else part
        where = f" in identifier {self.identifier!r}" if identifier is not None else ""
        super().__init__(f"{scrub(message, identifier)}{where}")


class UnknownProviderError(InvalidGeneratorError):
    """The provider named before `!` is not registered."""

    def __init__(self, provider: str, *, identifier: str | None = None, known: list[str]):
        self.provider = provider
        self.known = known
        super().__init__(
            f"unknown provider {provider!r} (registered: {', '.join(sorted(known))}; "
            "add your own with register_generator)",
            identifier=identifier,
            part=provider,
        )


class MissingDependencyError(RigRayError, ImportError):
    """A backend package is not installed; the message says what to install."""

    def __init__(self, package: str, *, install: str, purpose: str):
        self.package = package
        self.install = install
        super().__init__(
            f"{purpose} needs the {package!r} package, which is not installed: {install}",
            name=package,
        )


class InvalidMessageError(RigRayError, ValueError):
    """A value could not be read as a chat message; `value` is what was given."""

    def __init__(self, value: object, reason: str):
        self.value = value
        super().__init__(f"not a valid chat message ({reason}): {value!r:.200}")


class GenerationError(RigRayError):
    """A generation request was rejected or failed; `index` is the batch item, when known."""

    def __init__(self, message: str, *, index: int | None = None):
        self.index = index
        super().__init__(message)


class ContextLengthError(RigRayError, ValueError):
    """A prompt, with the tokens it may generate, does not fit the model's context.

    `completion` is None when the prompt alone fills the context."""

    def __init__(self, *, window: int, prompt: int, completion: int | None, what: str = "prompt"):
        self.window, self.prompt, self.completion = window, prompt, completion
        if completion is None:
            message = (
                f"This model's maximum context length is {window} tokens. However, your {what} "
                f"resulted in {prompt} tokens. Please reduce the length of the {what}."
            )
        else:
            message = (
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {prompt + completion} tokens ({prompt} in the {what}, {completion} "
                f"in the completion). Please reduce the length of the {what} or completion."
            )
        super().__init__(message)


class EngineDeadError(GenerationError):
    """The local engine behind a generator died (its process exited or failed), so no request
    can succeed on it until it is started again.

    An owned engine is started again by the generator's next call, off the caller's loop; a
    wrapped one (`from_obj`) never is. A Ray Data actor that meets this error should exit, so
    Ray restarts it and retries its batch.
    """


class ModelNotAvailableError(RigRayError):
    """A model could not be found or prepared locally (nothing is ever downloaded)."""

    def __init__(self, message: str, *, model: str):
        self.model = model
        super().__init__(message)


class TemplateError(RigRayError, KeyError):
    """Strict templating failed: `missing` lists `$names` with no value, `unused` the values
    that no template refers to."""

    def __init__(self, missing: list[str], unused: list[str] | None = None):
        self.missing = missing
        self.unused = unused or []
        problems = []
        if missing:
            fields = (f"${name}" if name.isidentifier() else f"${{{name}}}" for name in missing)
            problems.append(f"no value for {', '.join(fields)}")
        if self.unused:
            names = ", ".join(self.unused)
            problems.append(f"no template field for the value(s) {names}")
        super().__init__("strict templating: " + "; ".join(problems))

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ParseError(RigRayError, ValueError):
    """A structured model could not be read from a message; `model` is its class name."""

    def __init__(self, message: str, *, model: str):
        self.model = model
        super().__init__(message)


class ParseRetriesExhaustedError(RigRayError):
    """`until_parsed_as` asked again `max_depth` times and the models still did not parse."""

    def __init__(self, models: list[str], *, max_depth: int, last_error: str):
        self.models = models
        self.max_depth = max_depth
        self.last_error = last_error
        super().__init__(
            f"{' / '.join(models)} did not parse after {max_depth} retries "
            f"(last error: {last_error}); raise max_depth or make the prompt clearer"
        )


class UnsupportedParamsError(RigRayError, ValueError):
    """A generator was asked for a setting it cannot honour (json_schema on transformers);
    `generator` names the generator class and `param` the setting."""

    def __init__(self, message: str, *, generator: str, param: str):
        self.generator = generator
        self.param = param
        super().__init__(message)


class InvalidPoolError(RigRayError, ValueError):
    """An LLMPool was built from fewer than two generators, or from something not a generator."""


class PoolMemberError(RigRayError):
    """A pool member (or remote generator) failed; `identifier` names it, `cause` says why."""

    def __init__(self, identifier: str, cause: str):
        from rig_ray.redaction import redact, scrub

        self.identifier = redact(identifier)
        self.cause = scrub(cause, identifier)
        super().__init__(f"generator {self.identifier!r} failed: {self.cause}")


class PlacementError(RigRayError, ValueError):
    """A generator's actor cannot be placed as asked: an explicit `num_gpus` that disagrees
    with the GPUs its engine uses (`need`: tensor x pipeline x data parallel size)."""

    def __init__(self, message: str, *, need: int | None = None, num_gpus: float | None = None):
        self.need = need
        self.num_gpus = num_gpus
        super().__init__(message)


class BatchInputError(RigRayError, ValueError):
    """A batch job's input or options are wrong: a path that matches nothing, a format that
    cannot be read, or a column the prompts need that the data does not have.

    `source` is the input path or URI, and `column` the column at fault, when one is.
    """

    def __init__(self, message: str, *, source: str | None = None, column: str | None = None):
        from rig_ray.redaction import redact

        self.source = redact(source) if isinstance(source, str) else source
        self.column = column
        super().__init__(redact(message))


class PipelineError(BatchInputError):
    """A pipeline's stages or config are wrong, or a stage was refused (its settings changed
    since the run that made its folder); `stage` names the stage, `key` a config key at fault."""

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        key: str | None = None,
        source: str | None = None,
    ):
        self.stage = stage
        self.key = key
        super().__init__(message, source=source)


class ServeConfigError(RigRayError, ValueError):
    """A Ray Serve app could not be built from the given generators (none, two served under
    one name, a list of names that does not match them); `field` names the setting at fault."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(message)


class ServeRequestError(RigRayError):
    """A request to the OpenAI-compatible endpoint failed; the fields fill its HTTP reply.

    `status_code` is the HTTP status; `error_type`, `code` and `param` are the OpenAI error
    body's fields; `retry_after_s` (overload) becomes a Retry-After header.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ):
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        super().__init__(message)


class FolderLockLostError(RigRayError):
    """A batch run no longer holds its output folder's lock (another run took it over, or
    its heartbeat could not be written): it stops before writing another part."""

    def __init__(self, message: str, *, location: str | None = None):
        from rig_ray.redaction import redact

        self.location = redact(location) if isinstance(location, str) else location
        super().__init__(redact(message))


class BatchStoppedError(RigRayError):
    """The `/v1/batches` batch a row belongs to was stopped (cancelled, expired, or taken over
    by another replica) while the row waited: the batch's job stops, writing what it made,
    instead of failing the rows it has not made yet."""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        super().__init__(f"batch {batch_id} was stopped")


def validation_line(error: Exception) -> str:
    """A pydantic `ValidationError` in one line, `field: what is wrong` of its first error
    (other errors: their text on one line), redacted."""
    from pydantic import ValidationError

    from rig_ray.redaction import redact

    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return redact(f"{where}: {first['msg']}" if where else first["msg"])
    return redact(" ".join(str(error).split())) or type(error).__name__


def did_you_mean(name: str, known: t.Iterable[str]) -> str:
    """The hint of an error that refuses an unknown `name`: `; did you mean 'x'?` for the
    known name closest to it, or "" where none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
