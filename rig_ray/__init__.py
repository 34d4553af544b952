"""rig_ray: LLM generators named by identifier strings, run in scripts, on Ray and in batch.

Importing this package loads no torch, transformers, vLLM or litellm; each backend imports its
engine when a generator of it is first loaded.
"""

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
