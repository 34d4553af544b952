"""Generators: the interface, the identifier grammar, the provider registry and the backends."""

from rig_ray.generator.base import (
    DEFAULT_MAX_TOKENS,
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Generator,
    StopReason,
    Usage,
)
from rig_ray.generator.litellm_ import LiteLLMGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import (
    DEFAULT_PROVIDER,
    get_generator,
    get_identifier,
    register_generator,
    registered_providers,
)
from rig_ray.generator.transformers_ import TransformersGenerator
from rig_ray.generator.vllm_ import VLLMGenerator

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PROVIDER",
    "GenerateParams",
    "GeneratedChunk",
    "GeneratedMessage",
    "GeneratedText",
    "Generator",
    "LiteLLMGenerator",
    "StopReason",
    "TransformersGenerator",
    "Usage",
    "VLLMGenerator",
    "get_generator",
    "get_identifier",
    "register_generator",
    "registered_providers",
]
