"""GGUF files through llama.cpp's own converter (`convert_hf_to_gguf.py`).

The converter is not in any wheel, but the source distribution of `llama-cpp-python` on
PyPI carries llama.cpp's tree. We take `convert_hf_to_gguf.py`, `conversion/` and
`gguf-py/` from the sdist of the installed llama-cpp-python version (so the files match
the llama.cpp that loads them), fetched once with pip into `$MI_LLM_HOME/llama.cpp/<ver>/`.
`--llama-cpp DIR` or `MI_LLM_LLAMA_CPP` point at a llama.cpp checkout instead.

A model converted from a GGUF (the embedded gemma-3-270m) has no `tokenizer.model`, which
llama.cpp's Gemma converter wants; its vocabulary is then copied from the original GGUF,
so the exported file tokenizes exactly like the one shipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mi_llm.errors import MiLlmError

log = logging.getLogger(__name__)

# The sdist whose converter is used when llama-cpp-python is not installed.
DEFAULT_LLAMA_CPP_PYTHON = "0.3.36"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def _home() -> Path:
    from mi_llm.llm.home import mi_llm_home

    return mi_llm_home()


def _installed_llama_cpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def _is_converter_dir(d: Path) -> bool:
    return (d / "convert_hf_to_gguf.py").is_file() and (d / "gguf-py").is_dir()


def fetch_converter(version: str, dest: Path) -> Path:
    """Extract llama.cpp's converter from the llama-cpp-python sdist (pip download)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        log.info("fetching llama.cpp's converter from the llama-cpp-python %s source distribution", version)
        # Only llama-cpp-python itself as source: `:all:` would also build every one of its
        # build dependencies from source (cmake included) when pip has no cache.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            "--quiet",
            "-d",
            tmp,
            f"llama-cpp-python=={version}",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no sdist"]
            raise MiLlmError(
                f"could not fetch llama-cpp-python {version} to get llama.cpp's GGUF converter "
                f"({why[0]}); pass --llama-cpp DIR (a llama.cpp checkout)"
            )
        stage = Path(tmp) / "tree"
        with tarfile.open(sdists[0]) as tf:
            prefix = None
            members = []
            for m in tf.getmembers():
                parts = Path(m.name).parts
                if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp") and parts[3] in CONVERTER_PARTS:
                    prefix = Path(*parts[:3])
                    members.append(m)
            if prefix is None:
                raise MiLlmError(f"{sdists[0].name}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
            tf.extractall(stage, members=members, filter="data")
        src = stage / prefix
        tmp_dest = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp_dest, ignore_errors=True)
        shutil.move(str(src), tmp_dest)
        os.replace(tmp_dest, dest)
    return dest


def find_converter(llama_cpp: str | Path | None = None, fetch: bool = True) -> Path:
    """The folder with convert_hf_to_gguf.py + gguf-py: given, from the environment, cached,
    or fetched once."""
    given = llama_cpp or os.environ.get("MI_LLM_LLAMA_CPP")
    if given:
        d = Path(given).expanduser()
        if not _is_converter_dir(d):
            raise MiLlmError(f"{d}: not a llama.cpp tree (needs convert_hf_to_gguf.py and gguf-py/)")
        return d
    version = _installed_llama_cpp_version() or DEFAULT_LLAMA_CPP_PYTHON
    cached = _home() / "llama.cpp" / version
    if _is_converter_dir(cached):
        return cached
    if not fetch:
        raise MiLlmError(f"llama.cpp's GGUF converter is not cached in {cached}")
    return fetch_converter(version, cached)


def convert_to_gguf(
    model_dir: Path,
    outfile: Path,
    outtype: str,
    llama_cpp: str | Path | None = None,
    vocab_from: Path | None = None,
    chat_template: str | None = None,
) -> Path:
    """Run the converter in its own process (its `gguf` package must not mix with ours)."""
    conv = find_converter(llama_cpp)
    cmd = [
        sys.executable,
        "-m",
        "mi_llm.train.gguf_runner",
        "--llama-cpp",
        str(conv),
        "--model",
        str(model_dir),
        "--outfile",
        str(outfile),
        "--outtype",
        outtype,
    ]
    if vocab_from is not None and not (model_dir / "tokenizer.model").is_file():
        cmd += ["--vocab-from", str(vocab_from)]
    tpl_file = None
    if chat_template:
        tpl_file = outfile.with_name(f".{outfile.name}.template.jinja")
        tpl_file.write_text(chat_template, encoding="utf-8")
        cmd += ["--chat-template-file", str(tpl_file)]
    log.info("writing %s (%s)", outfile, outtype.upper())
    tmp_out = outfile.with_name(f".{outfile.name}.tmp")
    cmd[cmd.index("--outfile") + 1] = str(tmp_out)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not tmp_out.is_file():
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
            raise MiLlmError(f"GGUF conversion to {outtype} failed:\n{tail}")
        os.replace(tmp_out, outfile)
    finally:
        if tpl_file:
            tpl_file.unlink(missing_ok=True)
        tmp_out.unlink(missing_ok=True)
    return outfile


def main(argv: list[str] | None = None) -> int:
    """`python -m mi_llm.train.gguf --fetch`: cache the converter now (e.g. in a set-up step)."""
    import argparse

    ap = argparse.ArgumentParser(description="Fetch or locate llama.cpp's GGUF converter.")
    ap.add_argument("--fetch", action="store_true", help="download it into $MI_LLM_HOME/llama.cpp if missing")
    a = ap.parse_args(argv)
    try:
        print(find_converter(fetch=a.fetch))
    except MiLlmError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
