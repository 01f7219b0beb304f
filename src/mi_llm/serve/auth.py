"""Bearer-token auth and the rule that a server reachable from other machines needs a key."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from mi_llm.errors import MiLlmError

LOCAL_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; 0.0.0.0, :: and any other address are not."""
    h = host.strip().strip("[]").lower()
    if h in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key."""
    if not is_loopback(host) and not api_key:
        raise MiLlmError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use the model "
            "and read sessions. Pass --api-key KEY (or set MI_LLM_API_KEY), or bind to 127.0.0.1"
        )
    if api_key is not None and len(api_key) < 8:
        raise MiLlmError("the API key must be at least 8 characters")


def key_id(api_key: str | None) -> str:
    """A stable, non-reversible id for a key: sessions and rate limits are kept per key."""
    if not api_key:
        return "local"
    return "key-" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
