"""`rig-ray serve` with the test generators registered: `gated!<name>,gate=<file>` (loads
once the file exists) and `blocking!<name>,started_dir=<dir>` (each call writes a file
there, then runs until it is cancelled).

Run as `python -m tests.serve.serve_main <rig-ray serve arguments>`."""

from __future__ import annotations

import sys

from rig_ray.generator.registry import register_generator
from rig_ray.serve import cli
from tests.serve.generators import BlockingGenerator, GatedGenerator

if __name__ == "__main__":
    register_generator("gated", GatedGenerator)
    register_generator("blocking", BlockingGenerator)
    sys.exit(cli.main())
