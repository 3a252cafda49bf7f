"""Flightlog tests (a package, so that `python -m tests.smoke` and `-m tests.bench` work)."""
