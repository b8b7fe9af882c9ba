"""`medground serve`'s checks before Ray starts: every path, the port and the files a replica will read, so a
mistake is one line and exit 1 in about a second, not tracebacks from inside a replica half a minute later.

What is checked (each failure is a `PreflightError` naming the option and the fix):
- `--port` in 1..65535 and free on `--host` (a listening socket there is "in use"), the host resolvable;
- `--run-dir` a run directory with a readable `resolved_config.json`;
- the model (`--model`, else the run's model.path) an HF model directory with config.json;
- `--adapter` (or the run's latest checkpoint adapter) a servable adapter directory;
- the knowledge folder the run injected (or `knowledge_dir`) readable;
- the rollout overrides valid.
Imports no Ray and no torch (the point is to be quick).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from pydantic import ValidationError

from rollout.knowledge import load_knowledge
from services.config import ConfigError
from services.serve.adapters import AdapterError, latest_adapter, read_adapter
from services.serve.config import ServeArgs, resolve


class PreflightError(ValueError):
    """A serve option that cannot work; the message is one line with the fix."""


def check_port(host: str, port: int) -> None:
    """Fail unless `port` is valid and nothing listens on `host:port`."""
    if not 1 <= port <= 65535:
        raise PreflightError(f"--port {port} is not a TCP port; choose one in 1..65535 (default 8000)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PreflightError(f"--host {host!r} does not resolve ({exc.strerror}); use 127.0.0.1 or "
                             f"0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free; a listener is not
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(f"port {port} on {host} is in use (another `medground serve`? `ss -ltnp "
                                     f"'sport = :{port}'` shows it); pass --port N with a free one") from None
            raise PreflightError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --host or "
                                 f"--port (ports below 1024 need root)") from None


def check_args(args: ServeArgs) -> None:
    """Fail unless the run, model, adapter and knowledge that `args` name can all be read."""
    if args.run_dir is not None:
        run = Path(args.run_dir)
        if not run.is_dir():
            raise PreflightError(f"--run-dir {run} does not exist; pass a training run directory (runs/NAME)")
        if not (run / "resolved_config.json").is_file():
            raise PreflightError(f"--run-dir {run} is not a run directory (no resolved_config.json); pass "
                                 f"runs/NAME as `medground train` wrote it")
    if args.model_path is not None and not Path(args.model_path).is_dir():
        what = "is a file, not a directory" if Path(args.model_path).exists() else "does not exist"
        raise PreflightError(f"--model {args.model_path} {what}; pass an HF model directory "
                             f"(`medground init-model` makes one)")
    try:
        resolved = resolve(args)
    except FileNotFoundError as exc:
        hint = "--model" if args.model_path else "the run's model.path (or pass --model DIR)"
        raise PreflightError(f"{exc} [{hint}]") from None
    except ConfigError as exc:
        raise PreflightError(f"--run-dir {args.run_dir}: {' '.join(str(exc).split())}") from None
    except ValidationError as exc:
        raise PreflightError(f"invalid rollout settings for serving: {exc.errors()[0]['msg']}") from None
    try:
        if args.adapter_path is not None:
            if not Path(args.adapter_path).is_dir():
                raise PreflightError(f"--adapter {args.adapter_path} does not exist; pass a LoRA adapter "
                                     f"directory (runs/NAME/adapter or runs/NAME/checkpoints/step-N/adapter)")
            read_adapter(args.adapter_path)
        elif resolved.run_dir is not None:
            latest_adapter(resolved.run_dir)
    except AdapterError as exc:
        raise PreflightError(f"--adapter: {exc}") from None
    if resolved.knowledge_dir is not None:
        try:
            load_knowledge(resolved.knowledge_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise PreflightError(f"knowledge: {exc}") from None


def preflight(args: ServeArgs | None, host: str, port: int) -> None:
    """Every check above; `args` None (a Serve config file) checks the port only."""
    check_port(host, port)
    if args is not None:
        check_args(args)
