"""rig_ray: LLM generators named by identifier strings, run in scripts, on Ray and in batch.

Importing this package loads no torch, transformers, vLLM or litellm; each backend imports its
engine when a generator of it is first loaded. The subpackages `batch` and `serve` are
attributes that import on first use (`rr.batch.run(...)`, `rr.serve.build_app(...)`).
"""

import importlib
import typing as t

from rig_ray.chat import DEFAULT_MAX_DEPTH, Chat, ChatPipeline
from rig_ray.cluster import GeneratorActor, LLMPool, RemoteGenerator, remote
from rig_ray.completion import Completion, CompletionPipeline
from rig_ray.embedded import DEFAULT_MODEL, embedded_model_path
from rig_ray.errors import (
    EngineDeadError,
    GenerationError,
    InvalidGeneratorError,
    InvalidMessageError,
    InvalidPoolError,
    MissingDependencyError,
    ModelNotAvailableError,
    ParseError,
    ParseRetriesExhaustedError,
    PipelineError,
    PoolMemberError,
    RigRayError,
    TemplateError,
    UnknownProviderError,
    UnsupportedParamsError,
)
from rig_ray.generator import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Generator,
    LiteLLMGenerator,
    StopReason,
    TransformersGenerator,
    Usage,
    VLLMGenerator,
    get_generator,
    get_identifier,
    register_generator,
    registered_providers,
)
from rig_ray.message import Message, MessageLike, ParsedMessagePart, Role, fill_templates
from rig_ray.model import Model
from rig_ray.pipeline import FailMode

__version__ = "0.1.0"

_LAZY_SUBPACKAGES = ("batch", "serve")

if t.TYPE_CHECKING:
    from rig_ray import batch as batch
    from rig_ray import serve as serve


def __getattr__(name: str) -> t.Any:
    """`rig_ray.batch` and `rig_ray.serve`, imported when first asked for (PEP 562)."""
    if name in _LAZY_SUBPACKAGES:
        module = importlib.import_module(f"rig_ray.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rig_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBPACKAGES})


__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MODEL",
    "Chat",
    "ChatPipeline",
    "Completion",
    "CompletionPipeline",
    "EngineDeadError",
    "FailMode",
    "GenerateParams",
    "GeneratedChunk",
    "GeneratedMessage",
    "GeneratedText",
    "GenerationError",
    "Generator",
    "GeneratorActor",
    "InvalidGeneratorError",
    "InvalidMessageError",
    "InvalidPoolError",
    "LLMPool",
    "LiteLLMGenerator",
    "Message",
    "MessageLike",
    "MissingDependencyError",
    "Model",
    "ModelNotAvailableError",
    "ParseError",
    "ParseRetriesExhaustedError",
    "ParsedMessagePart",
    "PipelineError",
    "PoolMemberError",
    "RemoteGenerator",
    "RigRayError",
    "Role",
    "StopReason",
    "TemplateError",
    "TransformersGenerator",
    "UnknownProviderError",
    "UnsupportedParamsError",
    "Usage",
    "VLLMGenerator",
    "__version__",
    "embedded_model_path",
    "fill_templates",
    "get_generator",
    "get_identifier",
    "register_generator",
    "registered_providers",
    "remote",
]
