"""mi-llm's home folder ($MI_LLM_HOME, default ~/.cache/mi-llm): where models it makes are
cached (the converted embedded model, the bundled encoder, llama.cpp probes), with the
inter-process lock and the cached file digest that keep that cache consistent."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from mi_llm.errors import MiLlmError
from mi_llm.io import write_json

MODEL_INFO_FILE = "mi_llm_model.json"  # written into the model folders mi-llm makes (converted, merged)


def mi_llm_home() -> Path:
    return Path(os.environ.get("MI_LLM_HOME") or Path.home() / ".cache" / "mi-llm").expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock on `path` (created): two commands filling one cache entry at once
    fill it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_cache_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def seed_sha256(path: Path, digest: str) -> None:
    """Record a digest already verified (e.g. by the file's installer) so it is not computed."""
    path = Path(path).resolve()
    st = path.stat()
    write_json(
        sha256_cache_file(path), {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached beside it keyed by (path, size, mtime) so it is computed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = sha256_cache_file(path)
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache.read_text())
        if {k: cached.get(k) for k in key} == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with contextlib.suppress(OSError, MiLlmError):  # a read-only folder: computed again next time
        write_json(cache, {**key, "sha256": digest})
    return digest
