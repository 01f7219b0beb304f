"""The tuned expert: a few blocks of the embedded model adapted to the MITI codes (LoRA) with
a linear classification head, trained on a CPU.

The frozen embedding expert reads fixed hidden states; this one learns its representation
for the task. To stay affordable on a CPU, the lower `frozen_layers` blocks run once per
utterance in inference mode (`Embedder.token_states`, kept in memory as bf16), and only the
`tuned_layers` blocks above them are trained, from their pretrained weights, with LoRA
adapters on every linear layer. The head reads the mean of the final states over the
utterance's own tokens (the client's previous turn is in the sequence, not in the pool).

Training (sampling of low-weight sources, class weights, batches): `training.py`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.embed import Embedder, mean_pool
from mi_llm.miti.coders.training import StageProgress, epoch_samples, length_batches, train_classifier

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TunedConfig:
    model: str = "gemma-3-270m"
    frozen_layers: int = 9  # run once, in inference mode
    tuned_layers: int = 2  # the blocks above them, adapted with LoRA
    max_tokens: int = 96
    context_tokens: int = 64
    rank: int = 16
    epochs: int = 2
    lr: float = 5e-4  # the adapters'
    head_lr: float = 1e-3
    batch_size: int = 16
    warmup: float = 0.06
    class_weight_power: float = 0.5  # 0: none, 1: balanced; 0.5 (sqrt) scored best on AnnoMI
    seed: int = 0
    # per source, for this expert only (e.g. {"welivita": 0} trains it without those labels);
    # None: the coder's source weights
    source_weights: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunedConfig:
        return cls(**d)

    def embedder(self, keep_states: bool = False) -> Embedder:
        """The frozen blocks; `keep_states` keeps their outputs in memory (cross-validation)."""
        return Embedder(
            model=self.model,
            layer=self.frozen_layers,
            max_tokens=self.max_tokens,
            context=True,
            context_tokens=self.context_tokens,
            keep_states=keep_states,
            keep_upper=self.tuned_layers,
        )


class TunedExpert:
    """`fit` trains; `log_proba` codes; `state_dict`/`from_state` store the adapters and the head."""

    name = "tuned"

    def __init__(self, config: TunedConfig, labels: Sequence[str], embedder: Embedder | None = None):
        self.config = config
        self.labels = list(labels)
        self.embedder = embedder or config.embedder()
        self._top: Any = None  # the tuned blocks (a PEFT model) + the final norm
        self._head: Any = None

    # ------------------------------------------------------------- the network
    def _build(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        if self._top is not None:
            return
        e = self.embedder
        e._ensure()
        c = self.config
        if len(e.upper_layers) < c.tuned_layers:
            raise MiLlmError(
                f"{c.model} has {e.n_layers} layers: cannot tune {c.tuned_layers} above layer {c.frozen_layers}"
            )
        inner = e._model
        cfg = copy.deepcopy(inner.config)
        cfg.num_hidden_layers = c.tuned_layers
        if getattr(cfg, "layer_types", None):  # sliding vs full attention, per block
            cfg.layer_types = list(cfg.layer_types[c.frozen_layers : c.frozen_layers + c.tuned_layers])
        cfg.vocab_size, cfg.pad_token_id = 1, 0  # the inputs are hidden states: no token table needed
        torch.manual_seed(c.seed)
        top = type(inner)(cfg)
        for dst, src in zip(top.layers, e.upper_layers):
            dst.load_state_dict(src.state_dict())
        top.norm.load_state_dict(e.final_norm.state_dict())
        top.requires_grad_(False)
        self._top = get_peft_model(
            top, LoraConfig(r=c.rank, lora_alpha=2 * c.rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
        )
        self._head = torch.nn.Linear(cfg.hidden_size, len(self.labels))

    def _logits(self, states: Sequence[tuple[Any, int]], rows: Sequence[int]):
        import torch

        width = max(int(states[i][0].shape[0]) for i in rows)
        hidden = states[rows[0]][0].shape[1]
        x = torch.zeros((len(rows), width, hidden))
        att = torch.zeros((len(rows), width), dtype=torch.long)
        pool = torch.zeros((len(rows), width))
        for r, i in enumerate(rows):
            h, start = states[i]
            n = int(h.shape[0])
            x[r, :n] = h.float()
            att[r, :n] = 1
            pool[r, start:n] = 1.0
        hs = self._top(inputs_embeds=x, attention_mask=att, use_cache=False).last_hidden_state
        return self._head(mean_pool(hs, pool))

    def _batches(self, rows: Sequence[int] | np.ndarray, states, rng: np.random.Generator | None) -> list[list[int]]:
        return length_batches(rows, lambda i: int(states[i][0].shape[0]), self.config.batch_size, rng)

    # ------------------------------------------------------------- training
    def fit(
        self,
        texts: Sequence[str],
        contexts: Sequence[str],
        y: Sequence[str],
        weights: Sequence[float] | np.ndarray,
        progress: StageProgress | None = None,
    ) -> TunedExpert:
        """Train on utterances (with the client's previous turns), codes `y`, a weight per utterance."""
        import torch

        self._build()
        c = self.config
        rng = np.random.default_rng(c.seed)
        torch.manual_seed(c.seed)
        per_epoch = epoch_samples(weights, c.epochs, rng)
        # the frozen blocks run only on what some epoch samples
        need = sorted(set(np.concatenate(per_epoch).tolist())) if per_epoch else []
        got = self.embedder.token_states(
            [texts[i] for i in need],
            [contexts[i] for i in need],
            progress=(lambda d, n: progress("embeddings", d, n)) if progress else None,
        )
        states: list[tuple[Any, int]] = [(None, 0)] * len(weights)
        for i, st in zip(need, got):
            states[i] = st
        plan = [self._batches(rows, states, rng) for rows in per_epoch]
        params = [p for p in self._top.parameters() if p.requires_grad]
        self._top.train()
        t0 = time.monotonic()
        train_classifier(
            plan,
            lambda rows: self._logits(states, rows),
            self.labels,
            y,
            weights,
            [{"params": params, "lr": c.lr}, {"params": list(self._head.parameters()), "lr": c.head_lr}],
            class_weight_power=c.class_weight_power,
            warmup=c.warmup,
            progress=progress,
        )
        self._top.eval()
        log.info(
            "tuned %d blocks on %d utterances x %d epochs in %.0f s",
            c.tuned_layers,
            len(y),
            c.epochs,
            time.monotonic() - t0,
        )
        return self

    # ------------------------------------------------------------- coding
    def log_proba(self, texts: Sequence[str], contexts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """(n, labels) log-probabilities."""
        import torch

        self._build()
        states = self.embedder.token_states(texts, contexts, progress=progress)
        out = np.zeros((len(states), len(self.labels)))
        with torch.inference_mode():
            for rows in self._batches(range(len(states)), states, None):
                out[rows] = torch.log_softmax(self._logits(states, rows), dim=-1).numpy()
        return out

    # ------------------------------------------------------------- storage
    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        self._build()
        sd = {
            f"lora.{k}": v.detach().clone()
            for k, v in get_peft_model_state_dict(self._top, save_embedding_layers=False).items()
        }
        sd.update({f"head.{k}": v.detach().clone() for k, v in self._head.state_dict().items()})
        return sd

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from mi_llm.io import atomic_writer

        with atomic_writer(path, "wb") as f:
            f.write(save({k: v.contiguous() for k, v in self.state_dict().items()}))

    @classmethod
    def load(cls, path: Path, config: TunedConfig, labels: Sequence[str]) -> TunedExpert:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        x = cls(config, labels)
        x._build()
        sd = load_file(str(path))
        set_peft_model_state_dict(x._top, {k[5:]: v for k, v in sd.items() if k.startswith("lora.")})
        x._head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
        x._top.eval()
        return x
