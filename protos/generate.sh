#!/usr/bin/env bash
# Generate the Python code for protos/flightlog/v1 with the pinned tools of the project's venv
# (grpcio-tools, mypy-protobuf; see pyproject.toml). Never edit the output by hand.
#
#   protos/generate.sh [OUT_DIR]   # default: client (that is, client/flightlog/v1)
#
# The output is byte-identical across runs and machines: the tools are pinned, the inputs are
# passed in a fixed (C-locale) order, and protoc's output holds no time stamps or paths.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

out="${1:-client}"
venv_bin="${VENV_BIN:-$root/.venv/bin}"
python="$venv_bin/python"

for tool in "$python" "$venv_bin/protoc-gen-mypy" "$venv_bin/protoc-gen-mypy_grpc"; do
    if [[ ! -x "$tool" ]]; then
        echo "generate.sh: $tool not found; run 'make install' first." >&2
        exit 1
    fi
done

export LC_ALL=C
shopt -s nullglob
protos=(protos/flightlog/v1/*.proto)
if (( ${#protos[@]} == 0 )); then
    echo "generate.sh: no .proto files under protos/flightlog/v1." >&2
    exit 1
fi

mkdir -p "$out"
# Remove earlier output first, so that a deleted .proto does not leave its module behind.
rm -f "$out"/flightlog/v1/*_pb2.py "$out"/flightlog/v1/*_pb2_grpc.py \
    "$out"/flightlog/v1/*_pb2.pyi "$out"/flightlog/v1/*_pb2_grpc.pyi

# mypy-protobuf reports every file it writes on stderr; only other messages are shown.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
"$python" -m grpc_tools.protoc \
    -I protos \
    --plugin=protoc-gen-mypy="$venv_bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$venv_bin/protoc-gen-mypy_grpc" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    --mypy_out="$out" \
    --mypy_grpc_out="$out" \
    "${protos[@]}" 2>"$log" || status=$?
grep -v '^Writing mypy to ' "$log" >&2 || true
if (( status != 0 )); then
    echo "generate.sh: protoc failed (exit $status)" >&2
    exit "$status"
fi

init="$out/flightlog/v1/__init__.py"
if [[ ! -f "$init" ]]; then
    printf '"""Generated protobuf and gRPC modules for flightlog.v1 (see protos/generate.sh)."""\n' \
        >"$init"
fi
echo "generate.sh: generated ${#protos[@]} file(s) into $out/flightlog/v1"
