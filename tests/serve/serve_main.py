"""`rig-ray serve` with the test generators registered: `gated!<name>,gate=<file>` (loads
once the file exists) and `hanging!<name>` (hangs on a message containing HANG).

Run as `python -m tests.serve.serve_main <rig-ray serve arguments>`."""

from __future__ import annotations

import sys

from rig_ray.generator.registry import register_generator
from rig_ray.serve import cli
from tests.serve.generators import GatedGenerator, HangingGenerator

if __name__ == "__main__":
    register_generator("gated", GatedGenerator)
    register_generator("hanging", HangingGenerator)
    sys.exit(cli.main())
