"""Model resolution: a name becomes a local Hugging Face model folder with a chat template.

- `gemma-3-270m` (the default) is the embedded model (`mi_llm.llm.embedded`), converted once.
- A local folder with a `config.json` is used as it is.
- A known short name (see `KNOWN_MODELS`) or a Hugging Face id (`org/name`) is looked up in
  the Hugging Face cache, or downloaded when the hub can be reached.

The chat template is the tokenizer's own when it has one, else its family's (see
`mi_llm.llm.templates`), else a documented plain default.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.embedded import EMBEDDED_MODEL, prepare_embedded_folder
from mi_llm.llm.home import MODEL_INFO_FILE
from mi_llm.llm.templates import FAMILIES, family_for_model_type

DEFAULT_MODEL = EMBEDDED_MODEL  # what every command uses when no model is named

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


def prepare_embedded(force: bool = False) -> ResolvedModel:
    """Resolve the embedded model, converting it on first use (or again with `force`)."""
    emb = prepare_embedded_folder(force)
    family = emb.family
    return ResolvedModel(
        name=DEFAULT_MODEL,
        path=emb.path,
        family=family.name,
        chat_template=family.template,
        source="embedded",
        gguf=emb.gguf,
        sha256=emb.sha256,
        stop_tokens=family.stop_tokens(),
    )


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
        raise MiLlmError(
            f"{p}: a GGUF file is used by the llamacpp backend only (--backend llamacpp --model <hf folder> --gguf {p})"
        )
    hub_id = KNOWN_MODELS.get(name.lower())
    if hub_id is None and _HF_ID.match(name) and not p.exists() and not name.startswith((".", "/", "~")):
        hub_id = name
    if hub_id is None:
        if "/" in name or p.suffix:
            raise MiLlmError(f"{name}: no such model folder")
        raise MiLlmError(
            f"unknown model {name!r}; choose one of: {', '.join(known_choices())}, "
            "a Hugging Face id (org/name) or a local model folder"
        )
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
        why = (
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else f"{type(e).__name__}: {e}"
        )
        raise MiLlmError(
            f"model {hub_id!r}: no such local folder, and as a Hugging Face id it is not available: "
            f"{why}. Download it where the hub is reachable (huggingface-cli download) or pass a local folder"
        ) from None
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
        name=name,
        path=path.resolve(),
        family=family.name,
        chat_template=own or family.template,
        source=source,
        gguf=gguf,
        sha256=info.get("gguf_sha256"),
        stop_tokens=family.stop_tokens(),
        trust_remote_code=trust,
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
