"""API keys, who owns the sessions each key opens, and the rule that a server reachable from
other machines needs a key.

Keys never come from the command line (argv is visible to every user in `ps`): they come
from `$MI_LLM_API_KEY` (one key) or a keys file readable by its owner only, one key a line,
`OWNER: KEY` (a colon and a space; an owner's sessions are theirs whichever of their keys
opens them) or a bare `KEY` (its own owner); lines starting with # are comments:

    # coaching team
    alice: 3f9c...e1
    bob: 77a0...5d
    9b1e...c4
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from mi_llm.errors import InputError, MiLlmError

LOCAL_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
ENV_KEY = "MI_LLM_API_KEY"
MIN_KEY_CHARS = 8
_OWNER_LINE = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):\s+(\S+)$")
_BARE_KEY = re.compile(r"^\S+$")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; 0.0.0.0, :: and any other address are not."""
    h = host.strip().strip("[]").lower()
    if h in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_bind(host: str, has_key: bool) -> None:
    """Refuse to listen beyond this machine without a key."""
    if not is_loopback(host) and not has_key:
        raise MiLlmError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use the model "
            f"and read sessions. Set {ENV_KEY} or pass --api-key-file FILE, or bind to 127.0.0.1"
        )


def key_id(api_key: str | None) -> str:
    """A stable, non-reversible owner id for a key without a named owner."""
    if not api_key:
        return "local"
    return "key-" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def owner_id(name: str) -> str:
    """The owner id of a named owner in a keys file (never equal to a key_id or "local")."""
    return "owner:" + name


def check_key(key: str, where: str) -> str:
    if len(key) < MIN_KEY_CHARS:
        raise MiLlmError(f"{where}: the API key must be at least {MIN_KEY_CHARS} characters")
    return key


class KeyRing:
    """The accepted keys and the owner each one stands for; empty = no auth (loopback only)."""

    def __init__(self, owners_by_key: Mapping[str, str] | None = None):
        self._entries = [(k.encode("utf-8"), owner) for k, owner in (owners_by_key or {}).items()]

    @classmethod
    def single(cls, key: str | None) -> KeyRing:
        return cls({key: key_id(key)} if key else None)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def owners(self) -> set[str]:
        return {owner for _, owner in self._entries}

    def owner(self, token: str | None) -> str | None:
        """The owner of `token`, or None when it is no key of this ring."""
        if token is None:
            return None
        given = token.encode("utf-8")
        found = None
        for key, owner in self._entries:  # every key compared, in constant time each: no early exit
            if hmac.compare_digest(given, key):
                found = owner
        return found


def read_keys_file(path: str | Path, option: str = "--api-key-file") -> dict[str, str]:
    """{key: owner id} from a keys file (format in the module docstring); the file must be
    readable by its owner only, as ssh demands of private keys."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MiLlmError(f"{option}: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MiLlmError(f"{option}: {path}: cannot read it ({e})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MiLlmError(
            f"{option}: {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}): run chmod 600 {path}"
        )
    keys: dict[str, str] = {}
    lines: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := _OWNER_LINE.match(line):
            key, owner = m.group(2), owner_id(m.group(1))
        elif _BARE_KEY.match(line):
            key, owner = line, key_id(line)
        else:
            raise InputError(path, "expected 'OWNER: KEY' (owner of letters, digits, _ . @ -) or a bare KEY", n)
        if len(key) < MIN_KEY_CHARS:
            raise InputError(path, f"the API key must be at least {MIN_KEY_CHARS} characters", n)
        if key in keys:
            raise InputError(path, f"this key is already on line {lines[key]}", n)
        keys[key], lines[key] = owner, n
    if not keys:
        raise MiLlmError(f"{option}: {path} holds no keys")
    return keys


def keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    key = (os.environ if environ is None else environ).get(ENV_KEY) or ""
    key = key.strip()
    return {check_key(key, ENV_KEY): key_id(key)} if key else {}


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
