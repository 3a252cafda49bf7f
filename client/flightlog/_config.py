"""Ambient client configuration, read from environment variables.

``FLIGHTLOG_ENDPOINT``
    ``host:port`` of the server; default ``localhost:50051``. A ``https://`` prefix turns TLS
    on; an ``http://`` prefix is stripped.
``FLIGHTLOG_API_KEY``
    The API key, sent as ``authorization: Bearer <key>``.
``FLIGHTLOG_ORG_ID``
    The acting org, sent as ``x-org-id``; may be omitted by a principal in exactly one org.
``FLIGHTLOG_TLS``
    ``1``/``true``/``yes``/``on`` to use TLS, ``0``/``false``/``no``/``off`` not to. Default:
    on when one of the TLS files below is set.
``FLIGHTLOG_TLS_CA``
    PEM file of the CA that signed the server certificate; default: the system roots.
``FLIGHTLOG_TLS_CERT``, ``FLIGHTLOG_TLS_KEY``
    PEM client certificate and key, for mutual TLS; both or neither.
``FLIGHTLOG_TIMEOUT``
    Default deadline of unary calls, and how long a stream may take to deliver its first
    batch, in seconds; default 30 (5 for the ``flightlog`` command).

``make run`` writes the development values to ``.data/dev.env``; load them into the shell (for
example ``set -a; . .data/dev.env; set +a``) before using the CLI or the client.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path

from flightlog.errors import ConfigurationError

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_TIMEOUT_S", "ClientConfig"]

DEFAULT_ENDPOINT = "localhost:50051"
"""The endpoint used when ``FLIGHTLOG_ENDPOINT`` is not set: the ``make run`` server."""

DEFAULT_TIMEOUT_S = 30.0
"""The default deadline of unary calls, in seconds."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _parse_bool(name: str, value: str) -> bool:
    """Parse a boolean environment variable, rejecting anything ambiguous."""
    normalized = value.strip().lower()
    if normalized in _TRUE:
        return True
    if normalized in _FALSE:
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean (use 1/true or 0/false)")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Connection settings of a :class:`~flightlog.FlightlogClient`.

    Attributes:
        endpoint: ``host:port`` of the server.
        api_key: The API key, or ``None`` to send no ``authorization`` metadata.
        org_id: The default acting org, or ``None`` to let the server infer it.
        tls: Whether to connect with TLS.
        tls_ca: PEM file of the CA to trust, or ``None`` for the system roots.
        tls_cert: PEM client certificate for mutual TLS, or ``None``.
        tls_key: PEM private key of ``tls_cert``, or ``None``.
        timeout: Default deadline of unary calls, in seconds.
    """

    endpoint: str = DEFAULT_ENDPOINT
    api_key: str | None = None
    org_id: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        """Reject half-configured mutual TLS and non-positive timeouts early."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError(
                "FLIGHTLOG_TLS_CERT and FLIGHTLOG_TLS_KEY must be set together for mutual TLS"
            )
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigurationError(
                f"the timeout must be a positive number of seconds, got {self.timeout}"
            )
        if not self.endpoint:
            raise ConfigurationError("the endpoint is empty")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        default_timeout: float = DEFAULT_TIMEOUT_S,
    ) -> ClientConfig:
        """Build a configuration from ``FLIGHTLOG_*`` environment variables.

        Args:
            environ: The variables to read; defaults to :data:`os.environ`.
            default_timeout: The timeout when ``FLIGHTLOG_TIMEOUT`` is not set.

        Raises:
            ConfigurationError: A variable has an unusable value.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        endpoint = get("FLIGHTLOG_ENDPOINT") or DEFAULT_ENDPOINT
        tls_from_scheme: bool | None = None
        if endpoint.startswith("https://"):
            endpoint, tls_from_scheme = endpoint.removeprefix("https://"), True
        elif endpoint.startswith("http://"):
            endpoint, tls_from_scheme = endpoint.removeprefix("http://"), False
        endpoint = endpoint.rstrip("/")

        tls_ca = _path(get("FLIGHTLOG_TLS_CA"))
        tls_cert = _path(get("FLIGHTLOG_TLS_CERT"))
        tls_key = _path(get("FLIGHTLOG_TLS_KEY"))
        tls_env = env.get("FLIGHTLOG_TLS")
        if tls_env is not None and tls_env.strip():
            tls = _parse_bool("FLIGHTLOG_TLS", tls_env)
        elif tls_from_scheme is not None:
            tls = tls_from_scheme
        else:
            tls = any(p is not None for p in (tls_ca, tls_cert, tls_key))

        timeout_text = get("FLIGHTLOG_TIMEOUT")
        timeout = default_timeout
        if timeout_text is not None:
            try:
                timeout = float(timeout_text)
            except ValueError:
                raise ConfigurationError(
                    f"FLIGHTLOG_TIMEOUT={timeout_text!r} is not a number of seconds"
                ) from None

        return cls(
            endpoint=endpoint,
            api_key=get("FLIGHTLOG_API_KEY"),
            org_id=get("FLIGHTLOG_ORG_ID"),
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            timeout=timeout,
        )


def _path(value: str | None) -> Path | None:
    """Return ``value`` as an expanded path, or ``None``."""
    return None if value is None else Path(value).expanduser()
