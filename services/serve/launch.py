"""`medground serve`: start (or join) Ray, deploy the grounding app, block until Ctrl-C.

Two ways in: arguments (model / run dir / engine; deployment options from the decorator's defaults), or a
Ray Serve config file (deploy/serve/serve_config.yaml), deployed through the Serve controller exactly as
`serve run FILE` and a KubeRay RayService deploy it, with the host and port taken from the command line.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

APP_NAME = "medground"


def load_serve_config(path: Path, host: str | None, port: int | None) -> Any:
    """The Serve config file as Ray's schema (validated), with the HTTP host/port overridden when given."""
    from ray.serve.schema import ServeDeploySchema

    from services.serve.config import ServeArgs

    tree = yaml.safe_load(path.read_text()) or {}
    http = dict(tree.get("http_options") or {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    tree["http_options"] = http
    config = ServeDeploySchema.model_validate(tree)
    for app in config.applications:  # fail here, naming the field, rather than in the controller's log
        if app.import_path == "services.serve.app:build_app":
            ServeArgs.model_validate(app.args or {})
    return config


def serve_forever(args: dict[str, Any] | None, config_file: Path | None, host: str, port: int,
                  address: str | None, on_ready: Any = print) -> None:
    """Deploy and block; Ctrl-C or SIGTERM deletes the app (and stops the local Ray this started)."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run FILE` uses to deploy a config

    ray.init(address=address or "local", namespace="serve", log_to_driver=True)
    # After ray.init, whose own SIGTERM handler exits mid-shutdown: a SIGTERM to `medground serve` left Ray's
    # dashboard and runtime-env agents running. Now it stops as Ctrl-C does, through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if config_file is not None:
            config = load_serve_config(config_file, host, port)
            client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                           proxy_location=config.proxy_location)
            client.deploy_apps(config)
            names = [app.name for app in config.applications]
            _wait_running(names)
            url = f"http://{config.http_options.host}:{config.http_options.port}"
        else:
            from services.serve.app import build_app

            serve.start(http_options={"host": host, "port": port})
            serve.run(build_app(args or {}), name=APP_NAME, route_prefix="/")
            url = f"http://{host}:{port}"
        on_ready(f"serving on {url}/  (page at /, API docs at /docs); Ctrl-C stops")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        on_ready("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _wait_running(names: list[str], timeout_s: float = 900.0) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve could not deploy {failed}")
        if all(s == "RUNNING" for s in states.values()):
            return
        time.sleep(1.0)
    raise TimeoutError(f"applications {names} not RUNNING after {timeout_s:.0f} s; see `serve status`")
