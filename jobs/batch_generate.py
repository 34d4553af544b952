r"""A batch job for `ray job submit`: `rig-ray batch` run as the job's driver on the cluster.

From the repository root, with the dashboard at http://127.0.0.1:8265 (see cluster.yaml):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/batch_generate.py \
        s3://bucket/prompts.jsonl s3://bucket/out --generator 'vllm!...' --template '...'

It takes exactly the arguments of `rig-ray batch` (`--help` lists them). Ray sets RAY_ADDRESS
for the job, so the run joins the cluster; on the way out it only disconnects from it. Errors
are printed in one line and the exit status is non-zero, which makes `ray job submit` fail.
"""

from __future__ import annotations

import sys

from rig_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
