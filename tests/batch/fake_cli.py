"""`rig-ray` with the test generators registered as providers, for CLI runs in a subprocess:

python -m tests.batch.fake_cli batch IN OUT --generator 'echo!e' ...
"""

from __future__ import annotations

import sys

from rig_ray.cli import main
from rig_ray.generator import register_generator
from tests.batch.members import FailsUntilFixed, SlowEcho
from tests.fakes import FAKE_PROVIDERS

if __name__ == "__main__":
    for name, cls in {**FAKE_PROVIDERS, "slow": SlowEcho, "fixable": FailsUntilFixed}.items():
        register_generator(name, cls)
    sys.exit(main(sys.argv[1:]))
