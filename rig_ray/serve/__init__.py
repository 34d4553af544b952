"""An OpenAI-compatible endpoint on Ray Serve: one generator in one deployment (routes and
engine), several in one deployment each behind an ingress; request limits, fail-closed auth
and timeouts.

    from ray import serve
    from rig_ray.serve import APP_NAME, build_app

    serve.run(build_app("transformers!smollm2-135m,max_tokens=64"), name=APP_NAME)

Importing this package is light: Ray Serve, FastAPI and the engines load when an app is built
or a replica starts.
"""

from rig_ray.serve.app import APP_NAME, INGRESS_NAME, build_app
from rig_ray.serve.auth import API_KEY_ENV
from rig_ray.serve.config import AppArgs, app_builder
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.served_model import ServedModel, deployment_name

__all__ = [
    "API_KEY_ENV",
    "APP_NAME",
    "INGRESS_NAME",
    "AppArgs",
    "RequestLimits",
    "ServedModel",
    "app_builder",
    "build_app",
    "deployment_name",
]
