"""The operator's command line, `medground` (typer): main.py (train, eval, serve, export, status, scale,
submit, models), data.py (`medground data ...`), ops.py (status, scale and submit against a cluster)."""

from services.cli.data import data_app
from services.cli.main import app, main

app.add_typer(data_app, name="data")

__all__ = ["app", "main"]
