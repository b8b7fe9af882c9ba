"""Every deployment manifest parses and agrees with the code and with the others: one image name across the
Dockerfile and the KubeRay manifests, entrypoints that call existing `medground` commands on config files
that exist and validate, GPU workers that request `nvidia.com/gpu`, enough resources for the config they run,
and ports that match what the code uses (GCS 6379, dashboard/job server 8265, Serve HTTP from the Serve
config). The Serve config and the RayService are checked once they exist (they come with the Serve app)."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from services.cli import app, ops
from services.cluster.startup import CPU_ENV
from services.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile.gpu"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
CLUSTER = DEPLOY / "cluster" / "cluster.yaml"
SERVE_CONFIG = DEPLOY / "serve" / "serve_config.yaml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
MANIFESTS = [p for p in (DOCKERFILE, RAYJOB, RAYSERVICE, CLUSTER, SERVE_CONFIG,
                         *sorted((DEPLOY / "jobs").glob("*.yaml"))) if p.exists()]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _image() -> str:
    """The image the Dockerfile's own build instruction tags."""
    tags = set(re.findall(r"docker build -f deploy/docker/Dockerfile\.gpu -t (\S+) \.",
                          DOCKERFILE.read_text()))
    assert len(tags) == 1, f"Dockerfile.gpu must document one `docker build ... -t IMAGE .`, found {tags}"
    return tags.pop()


def _containers(tree: Any) -> list[dict[str, Any]]:
    """Every container spec anywhere in a manifest (head, worker groups, submitter)."""
    if isinstance(tree, dict):
        found = list(tree["containers"]) if isinstance(tree.get("containers"), list) else []
        return found + [c for k, v in tree.items() if k != "containers" for c in _containers(v)]
    if isinstance(tree, list):
        return [c for v in tree for c in _containers(v)]
    return []


def _cluster_spec(path: Path) -> dict[str, Any]:
    spec = _yaml(path)["spec"]
    cluster: dict[str, Any] = spec["rayClusterSpec" if "rayClusterSpec" in spec else "rayClusterConfig"]
    return cluster


def _group_gpus(group: dict[str, Any]) -> int:
    """GPUs per pod of a worker group: the containers' `nvidia.com/gpu` limit (KubeRay derives Ray's num-gpus
    from it); an explicit `num-gpus` start parameter must agree."""
    limits = {int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
              for c in _containers(group)}
    assert len(limits) == 1, (group.get("groupName"), limits)
    gpus = limits.pop()
    if "num-gpus" in group.get("rayStartParams", {}):
        assert int(group["rayStartParams"]["num-gpus"]) == gpus, (
            f"{group['groupName']}: num-gpus != the GPU limit")
    return gpus


def _mounts(cluster: dict[str, Any]) -> dict[str, str]:
    """mountPath -> persistent volume claim, over the head and every worker group."""
    out: dict[str, str] = {}
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = spec["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            out.update({m["mountPath"]: claims[m["name"]] for m in container.get("volumeMounts", [])
                        if m["name"] in claims})
    return out


def _on_claim(path: str, mounts: dict[str, str]) -> tuple[str, str]:
    """(claim, path inside it) of an absolute path in a pod."""
    mount = next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)
    assert mount is not None, f"{path} is on no persistent volume the pods mount ({mounts})"
    return mounts[mount], path[len(mount.rstrip("/")) + 1:]


def _check_entrypoint(command: str) -> RunConfig:
    """`medground <command> CONFIG --set ...`: the command exists, CONFIG exists in the image (/app is the
    repository) and validates with the overrides."""
    args = shlex.split(command)
    assert args[0] == "medground", f"entrypoint {command!r} must call the console script"
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert args[1] in commands, f"`medground {args[1]}` is not a CLI command ({sorted(commands)})"
    assert args[1] == "train", f"a training job runs `medground train`, not {args[1]!r}"
    config = Path(args[2])
    local = ROOT / config.relative_to("/app") if config.is_absolute() else ROOT / config
    assert local.is_file(), f"entrypoint config {config} does not exist in the repository ({local})"
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    for item in overrides:
        key, _, value = item.partition("=")
        if (key.endswith("_dir") or key.endswith(".path")) and value.startswith("/app/"):
            assert (ROOT / value.removeprefix("/app/")).exists(), f"{item}: no {value} in the image"
    return load_config(local, overrides)


def test_every_manifest_starts_with_a_usage_comment() -> None:
    for path in MANIFESTS:
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path.relative_to(ROOT)} must start with a comment on how to use it"
        if path.suffix == ".yaml":
            _yaml(path)  # parses


def test_dockerfile_builds_the_gpu_extra_with_the_console_script_and_ports() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M), "the GPU image starts from a CUDA base image"
    assert 'pip install ".[gpu]"' in text and "medground --help" in text
    assert re.search(r"^WORKDIR /app$", text, re.M)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in [p.rstrip("*") for p in packages["include"]] + ["deploy"]:
        assert re.search(rf"^COPY {package} {package}$", text, re.M), f"the image must copy {package}/"
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert {ops.GCS_PORT, ops.DASHBOARD_PORT, _serve_port()} <= exposed
    assert _image().endswith(f":{VERSION}-gpu"), f"tag the image with the package version {VERSION}"


@pytest.mark.parametrize("path", [RAYJOB, RAYSERVICE], ids=["rayjob", "rayservice"])
def test_kuberay_manifests_use_the_dockerfile_image_and_gpus(path: Path) -> None:
    images = {c["image"] for c in _containers(_yaml(path))}
    assert images == {_image()}, f"{path.name}: images {images} differ from Dockerfile.gpu's {_image()}"
    cluster = _cluster_spec(path)
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    head = cluster["headGroupSpec"]
    ports = {p["containerPort"] for c in _containers(head) for p in c.get("ports", [])}
    assert {ops.GCS_PORT, ops.DASHBOARD_PORT} <= ports
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    for container in _containers(head):
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    groups = cluster["workerGroupSpecs"]
    assert any(_group_gpus(g) > 0
               for g in groups), "no GPU worker group (containers must limit nvidia.com/gpu)"
    for group in groups:
        for container in _containers(group):
            res = container["resources"]
            # Kubernetes schedules GPUs by the device plugin's resource: request = limit
            if _group_gpus(group):
                assert str(res["requests"]["nvidia.com/gpu"]) == str(res["limits"]["nvidia.com/gpu"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_runs_an_existing_config_that_fits_its_cluster() -> None:
    job = _yaml(RAYJOB)["spec"]
    cfg = _check_entrypoint(job["entrypoint"])
    assert cfg.pool.gpus_per_worker > 0 and cfg.learner.gpus_per_rank > 0, "a GPU job trains on GPUs"
    groups = _cluster_spec(RAYJOB)["workerGroupSpecs"]
    gpus = sum(_group_gpus(g) * g["replicas"] for g in groups)
    need = cfg.pool.num_workers * cfg.pool.gpus_per_worker + cfg.learner.num_ranks * cfg.learner.gpus_per_rank
    assert gpus >= need, f"{gpus} GPUs in the worker groups, {need} needed by the config"
    # the learner's ranks PACK onto one node when one group holds them all
    assert any(_group_gpus(g) >= cfg.learner.num_ranks * cfg.learner.gpus_per_rank for g in groups)
    for group in groups:
        gpus_per_pod = _group_gpus(group)
        cpus = min(float(c["resources"]["limits"]["cpu"]) for c in _containers(group))
        need_cpu = max(cfg.pool.cpus_per_worker, cfg.learner.cpus_per_rank) * max(gpus_per_pod, 1)
        assert cpus >= min(need_cpu, cfg.learner.cpus_per_rank
                           * cfg.learner.num_ranks), (group["groupName"], cpus)


def test_cluster_launcher_installs_the_gpu_extra_with_gpu_workers() -> None:
    cluster = _yaml(CLUSTER)
    assert cluster["provider"]["type"] in ("aws", "gcp", "azure")
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the driver's node schedules no GPU work"
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values()), "no GPU worker type"
    cfg = load_config(DEPLOY / "configs" / "gpu.yaml")
    max_gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0) for t in types.values())
    assert max_gpus >= cfg.pool.num_workers + cfg.learner.num_ranks
    setup = " ".join(cluster["setup_commands"])
    assert "[gpu]" in setup and "pip install" in setup
    start = " ".join(cluster["head_start_ray_commands"])
    assert f"--port={ops.GCS_PORT}" in start and f"--dashboard-port={ops.DASHBOARD_PORT}" in start
    assert ("RAY_AUTH_MODE=token" in start
            and "RAY_AUTH_MODE=token" in " ".join(cluster["worker_start_ray_commands"]))


def test_job_runtime_envs_are_what_submit_sends() -> None:
    for gpu in (False, True):
        env = ops.runtime_env(gpu, ROOT)
        assert set(env) <= {"excludes", "env_vars", "working_dir", "pip", "py_modules"}
        assert {".venv", ".git", "runs", "models", "data"} <= set(env["excludes"])
        assert all(isinstance(v, str) for v in env["env_vars"].values()), "env vars must be strings"
    # a CPU cluster's jobs run with the environment of a local run: the one dict, not a copy that drifts
    assert ops.runtime_env(False, ROOT)["env_vars"] == CPU_ENV


def _serve_port() -> int:
    """The Serve HTTP port: the Serve config's, else `medground serve`'s default."""
    if SERVE_CONFIG.exists():
        return int(_yaml(SERVE_CONFIG)["http_options"]["port"])
    return 8000  # Ray Serve's default, which `medground serve` keeps


def test_serve_config_imports_and_validates() -> None:
    tree = _yaml(SERVE_CONFIG)
    assert tree["applications"], "the Serve config deploys no application"
    for application in tree["applications"]:
        module, _, attr = application["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), attr, None)
        assert callable(builder), f"import_path {application['import_path']} is not importable"
        if application["import_path"] == "services.serve.app:build_app":
            from services.serve.config import ServeArgs

            ServeArgs.model_validate(application.get("args") or {})
    cli_serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    port_default = next((p.default for p in cli_serve.params if p.name == "port"), None)
    if port_default is not None:
        assert port_default == _serve_port(), "`medground serve --port` default differs from the Serve config"


def test_rayservice_serves_the_serve_config_on_its_port() -> None:
    spec = _yaml(RAYSERVICE)["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    paths = {a["import_path"] for a in serve["applications"]}
    if SERVE_CONFIG.exists():
        assert paths == {a["import_path"] for a in _yaml(SERVE_CONFIG)["applications"]}
    port = int(serve.get("http_options", {}).get("port", 8000))
    assert port == _serve_port()
    head_ports = {p["containerPort"] for c in _containers(_cluster_spec(RAYSERVICE)["headGroupSpec"])
                  for p in c.get("ports", [])}
    assert port in head_ports, f"the head container must expose the Serve port {port}"
    # the service serves what the RayJob trains: the same run directory on the same volume claim
    job_cfg = _check_entrypoint(_yaml(RAYJOB)["spec"]["entrypoint"])
    job_run = _on_claim(f"{job_cfg.output_dir}/{job_cfg.name}", _mounts(_cluster_spec(RAYJOB)))
    for application in serve["applications"]:
        run_dir = (application.get("args") or {}).get("run_dir")
        if run_dir is None:
            continue
        served = _on_claim(run_dir, _mounts(_cluster_spec(RAYSERVICE)))
        assert served == job_run, (f"the RayService serves {run_dir} = {served} (claim, path), the RayJob writes "  # noqa: E501
                                   f"{job_cfg.output_dir}/{job_cfg.name} = {job_run}")
        gpus = max(_group_gpus(g) for g in _cluster_spec(RAYSERVICE)["workerGroupSpecs"])
        for deployment in application.get("deployments", []):
            assert deployment.get("ray_actor_options", {}).get("num_gpus", 0) <= gpus
