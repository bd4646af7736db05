"""JSON Schemas shipped as package data: the mapping file (cli-contract.md §6) and the
``--json`` output document (cli-contract.md §3)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """Return a fresh copy of the schema ``name`` (``"mapping"`` or ``"mapping.schema.json"``).

    A new dict each call, so a caller that edits its copy cannot change anyone else's.
    """
    filename = name if name.endswith(".json") else f"{name}.schema.json"
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"{name!r} is not a schema name")
    resource = resources.files(__name__).joinpath(filename)
    if not resource.is_file():
        raise FileNotFoundError(f"no schema named {filename!r} in {__name__}")
    schema = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(schema, dict):
        raise ValueError(f"{filename}: a schema must be a JSON object")
    return schema
