"""The layers import downwards only: the RPC layer reaches the database through the use cases
(``services/``), never through ``storage/`` itself."""

from __future__ import annotations

import ast
from pathlib import Path

import flightlog_server.rpc

RPC = Path(flightlog_server.rpc.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_rpc_layer_never_imports_storage() -> None:
    offenders = {
        path.name: sorted(n for n in _imports(path) if n.startswith("flightlog_server.storage"))
        for path in sorted(RPC.glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}
