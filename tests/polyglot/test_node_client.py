"""The contract from Node.js: tests/polyglot/node/client.mjs runs a session's life cycle.

The Node program loads protos/ at run time with @grpc/proto-loader and asserts every result
itself (see its header); this test installs its pinned dependencies with `npm ci` into the
ignored tests/polyglot/node/node_modules (only when the lockfile changed since the last install)
and runs it against the test server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support import run_command

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MODULES = NODE_DIR / "node_modules"
# Written into node_modules after a successful `npm ci`, which deletes node_modules first, so a
# stale or half-finished install never carries a matching stamp.
INSTALL_STAMP = NODE_MODULES / ".flightlog-install.sha256"
NPM_TIMEOUT_S = 300.0
CLIENT_TIMEOUT_S = 180.0


def _google_rpc_proto_dir() -> Path:
    """The site-packages directory holding googleapis-common-protos' google/rpc/*.proto."""
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    assert spec is not None and spec.origin, "googleapis-common-protos is not installed"
    root = Path(spec.origin).resolve().parent.parent.parent
    for name in ("status.proto", "error_details.proto"):
        assert (root / "google" / "rpc" / name).is_file(), (
            f"google/rpc/{name} not found under {root}; googleapis-common-protos should ship it"
        )
    return root


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update(name.encode())
        digest.update((NODE_DIR / name).read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialize installs across concurrent test processes on this machine."""
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"flightlog-npm-{key}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _ensure_node_modules(npm: str) -> None:
    digest = _lock_digest()
    if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == digest:
        return
    with _install_lock():
        if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == digest:
            return
        env = {**os.environ, "npm_config_update_notifier": "false"}
        code, output = await run_command(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env, timeout=NPM_TIMEOUT_S
        )
        assert code == 0, f"npm ci failed with exit code {code}:\n{output}"
        INSTALL_STAMP.write_text(digest + "\n")


async def test_node_client_runs_a_session_life_cycle(
    grpc_target: str, api_key: str, org_id: str
) -> None:
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node is not None and npm is not None, "Node.js and npm must be on PATH for this test"

    await _ensure_node_modules(npm)

    env = {
        **os.environ,
        "FLIGHTLOG_ENDPOINT": grpc_target,
        "FLIGHTLOG_API_KEY": api_key,
        "FLIGHTLOG_ORG_ID": org_id,
        "FLIGHTLOG_PROTO_PATH": str(_google_rpc_proto_dir()),
    }
    code, output = await run_command(
        [node, "client.mjs"], cwd=NODE_DIR, env=env, timeout=CLIENT_TIMEOUT_S
    )
    print(output)
    assert code == 0, f"the Node client failed (exit code {code}):\n{output}"
    assert "checks passed" in output, output
