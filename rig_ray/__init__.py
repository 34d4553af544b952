"""rig_ray: LLM generators named by identifier strings, run in scripts, on Ray and in batch.

Importing this package loads no torch, transformers, vLLM or litellm; each backend imports its
engine when a generator of it is first loaded.
"""

from rig_ray.embedded import DEFAULT_MODEL, embedded_model_path
from rig_ray.errors import (
    GenerationError,
    InvalidGeneratorError,
    InvalidMessageError,
    MissingDependencyError,
    ModelNotAvailableError,
    RigRayError,
    UnknownProviderError,
)
from rig_ray.generator import (
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
from rig_ray.message import Message, Role

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "GenerateParams",
    "GeneratedMessage",
    "GeneratedText",
    "GenerationError",
    "Generator",
    "InvalidGeneratorError",
    "InvalidMessageError",
    "LiteLLMGenerator",
    "Message",
    "MissingDependencyError",
    "ModelNotAvailableError",
    "RigRayError",
    "Role",
    "StopReason",
    "TransformersGenerator",
    "UnknownProviderError",
    "Usage",
    "VLLMGenerator",
    "__version__",
    "embedded_model_path",
    "get_generator",
    "get_identifier",
    "register_generator",
    "registered_providers",
]
