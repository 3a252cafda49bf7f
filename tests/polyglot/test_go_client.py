"""The contract from Go: Go code generated from protos/ as shipped builds and runs on the server.

The test generates the Go package with the repository's buf.gen.yaml (protoc-gen-go and
protoc-gen-go-grpc) into a temporary GOPATH, at the import path the protos' `go_package` names,
builds tests/polyglot/go (which asserts every result itself, see its header) against it and runs
it on the test server. Nothing generated is committed.

No module proxy is reachable here, so the build runs in GOPATH mode against the Go sources that
Debian's packages install under /usr/share/gocode (grpc-go, google.golang.org/protobuf, genproto's
errdetails); the build cache is the ignored tests/polyglot/go/.cache, so later runs are quick.

When Go or the plugins are not installed, the test FAILS in CI (``CI=true``: .ci/run installs
them, so their absence is a bug) and is skipped elsewhere, naming the Debian packages to install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flightlog.v1 import common_pb2
from tests.support import find_programs, prerequisite_missing, run_command

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "tests" / "polyglot" / "go"
GO_CACHE = GO_DIR / ".cache"
BUF = Path(sys.executable).parent / "buf"
DEBIAN_GOPATH = Path("/usr/share/gocode")
# What .ci/run installs for this test. golang-google-protobuf-dev and the 1.5 golang/protobuf are
# named because apt would otherwise satisfy grpc's dependency with the 1.3 one, which predates
# google.golang.org/protobuf, the runtime protoc-gen-go's output needs.
GO_PACKAGES = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-genproto-dev"
    " golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"
)
GO_IMPORTS = (
    "google.golang.org/grpc",
    "google.golang.org/protobuf",
    "google.golang.org/genproto/googleapis/rpc/errdetails",
)
# buf.gen.yaml writes the package to gen/go/flightlog/v1, which is its import path below the
# repository's Go import path.
GENERATED_DIR = "gen/go/flightlog/v1"
STEP_TIMEOUT_S = 600.0


def _go_import_path() -> str:
    """The import path of the generated package, from the protos' go_package option."""
    go_package = common_pb2.DESCRIPTOR.GetOptions().go_package
    import_path, _, package_name = go_package.partition(";")
    assert package_name == "flightlogv1", f"go_package {go_package!r} names no package flightlogv1"
    assert import_path.endswith("/" + GENERATED_DIR), (
        f"go_package {go_package!r} does not end in {GENERATED_DIR}, where buf.gen.yaml writes"
    )
    return import_path


def _go_env(gopath: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": os.pathsep.join([str(gopath), str(DEBIAN_GOPATH)]),
        "GOCACHE": str(GO_CACHE),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }


@pytest.mark.timeout(4 * STEP_TIMEOUT_S)
async def test_go_client_generated_from_the_protos_runs_against_the_server(
    tmp_path: Path, grpc_target: str, api_key: str, org_id: str
) -> None:
    go, gofmt, _, _ = find_programs(
        ["go", "gofmt", "protoc-gen-go", "protoc-gen-go-grpc"], GO_PACKAGES
    )
    for package in GO_IMPORTS:
        if not (DEBIAN_GOPATH / "src" / package).is_dir():
            prerequisite_missing(f"the Go package {package} under {DEBIAN_GOPATH}", GO_PACKAGES)

    gopath = tmp_path / "gopath"
    repository_path = _go_import_path().removesuffix("/" + GENERATED_DIR)
    code, output = await run_command(
        [
            str(BUF),
            "generate",
            "--template",
            "buf.gen.yaml",
            "--output",
            str(gopath / "src" / repository_path),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        timeout=STEP_TIMEOUT_S,
    )
    assert code == 0, f"buf generate failed (exit code {code}):\n{output}"
    generated = sorted(p.name for p in (gopath / "src" / _go_import_path()).glob("*.go"))
    assert "session_service.pb.go" in generated, generated
    assert "session_service_grpc.pb.go" in generated, generated

    env = _go_env(gopath)
    sources = sorted(path.name for path in GO_DIR.glob("*.go"))
    code, output = await run_command([gofmt, "-l", *sources], cwd=GO_DIR, env=env, timeout=60)
    assert (code, output) == (0, ""), f"gofmt would reformat tests/polyglot/go:\n{output}"
    code, output = await run_command([go, "vet", "."], cwd=GO_DIR, env=env, timeout=STEP_TIMEOUT_S)
    assert code == 0, f"go vet failed (exit code {code}):\n{output}"
    client = tmp_path / "flightlog-go-client"
    code, output = await run_command(
        [go, "build", "-o", str(client), "."], cwd=GO_DIR, env=env, timeout=STEP_TIMEOUT_S
    )
    assert code == 0, f"go build failed (exit code {code}):\n{output}"

    run_env = {
        **os.environ,
        "FLIGHTLOG_ENDPOINT": grpc_target,
        "FLIGHTLOG_API_KEY": api_key,
        "FLIGHTLOG_ORG_ID": org_id,
    }
    code, output = await run_command([str(client)], cwd=tmp_path, env=run_env, timeout=180)
    print(output)
    assert code == 0, f"the Go client failed (exit code {code}):\n{output}"
    # The checks that prove each step of the scenario ran, not only that the program exited 0.
    for check in (
        "ListSessions streamed",
        "ListSessions filtered by name lists exactly this run's three sessions",
        "AddSessionFiles whole: the session bounds are the file window",
        "the status code is INVALID_ARGUMENT",
        "ErrorInfo reason",
        "BadRequest names the offending field under files[0]",
        "checks passed",
    ):
        assert check in output, f"{check!r} missing from the Go client's output:\n{output}"
