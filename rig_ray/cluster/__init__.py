"""Generators on Ray: `remote()` starts a GeneratorActor, `LLMPool` splits generations.

Nothing here imports Ray until a remote generator is started or called.
"""

from rig_ray.cluster.actor import GeneratorActor, remote
from rig_ray.cluster.pool import LLMPool
from rig_ray.cluster.remote_generator import RemoteGenerator
from rig_ray.cluster.split import generations_per_member

__all__ = ["GeneratorActor", "LLMPool", "RemoteGenerator", "generations_per_member", "remote"]
