"""Generated protobuf and gRPC modules for flightlog.v1 (see protos/generate.sh)."""
