"""Sentence vectors from the embedded model's hidden states, cached on disk.

The vector of an utterance is the mean of one layer's hidden states over the utterance's
own tokens. With `context`, the client's previous turn is written before it
("Client: ... / Counselor: ...") so the utterance's states can attend to what it answers
(a reflection echoes the client), but only the utterance's tokens are pooled. With
`window` > 1, the last `window` utterances of the conversation before it are written
instead, one "Client: ..." / "Counselor: ..." line each (the counselor's own previous
turn among them), cut to `context_tokens` from the left.

Running only the first `layer` transformer blocks keeps it affordable on a CPU: the blocks
above the chosen layer are never computed. The cache ($MI_LLM_EMBED_CACHE, default $MI_LLM_HOME/cache/embeddings) is keyed by
model, layer, lengths, context mode and the exact texts, so re-training and
cross-validation pay once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


def _key(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class EmbeddingCache:
    """Vectors by key, in .npz shards under a folder; each shard written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._mem: dict[str, np.ndarray] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.folder.is_dir():
            return
        for f in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(f) as z:
                    keys, vecs = z["keys"], z["vecs"]
            except (OSError, ValueError, KeyError):
                log.warning("skipping an unreadable embedding cache shard %s", f)
                continue
            for k, v in zip(keys.tolist(), vecs):
                self._mem[str(k)] = v

    def get(self, key: str) -> np.ndarray | None:
        self._load()
        return self._mem.get(key)

    def put_many(self, keys: Sequence[str], vecs: np.ndarray) -> None:
        self._load()
        if not len(keys):
            return
        for k, v in zip(keys, vecs):
            self._mem[k] = v
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{_key(*keys)[:10]}.npz"
        tmp = self.folder / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.array(list(keys)), vecs=np.asarray(vecs, dtype=np.float32))
        os.replace(tmp, self.folder / name)


@dataclass
class _Stack:
    """The frozen lower blocks of a causal LM (run in eval mode, never trained) and its tokenizer."""

    model: Any
    tokenizer: Any
    final_norm: Any
    upper_layers: list
    n_layers: int


# The last loaded stack, shared by every Embedder of the same model and layer in this process:
# the therapist and the client-talk coder read the same one, and one `mi-llm demo` loaded it
# five times (each load about 5 s here: the 1 GB weights and the 262k-token tokenizer).
_stacks: dict[tuple, _Stack] = {}
_stacks_lock = threading.Lock()


class Embedder:
    """Mean-pooled hidden states of layer `layer` of a causal LM (default: the embedded model)."""

    # who speaks the coded utterance, and who the context before it (the client-talk coder swaps them)
    speaker = "Counselor"
    context_speaker = "Client"

    def __init__(
        self,
        model: str = "gemma-3-270m",
        layer: int = 9,
        max_tokens: int = 96,
        context: bool = True,
        context_tokens: int = 64,
        batch_size: int = 16,
        cache_dir: Path | None = None,
        keep_states: bool = False,
        keep_upper: int = 0,
        window: int = 1,
        history: int = 0,
    ):
        self.model_name = model
        self.layer = layer
        self.max_tokens = max_tokens
        self.context = context
        self.context_tokens = context_tokens
        self.window = window  # utterances of context: 1 = the client's previous turn only
        # vectors of the counselor's own earlier turns joined to each utterance's (`embed_items`)
        self.history = history
        self.batch_size = batch_size
        self._cache_dir = cache_dir
        # loaded lazily (transformers objects)
        self._model: Any = None
        self._tok: Any = None
        self._tag: str | None = None
        self._cache: EmbeddingCache | None = None
        # token states kept in memory by (text, context): cross-validation runs the frozen blocks once
        self._states: dict[str, tuple[object, int]] | None = {} if keep_states else None
        self.keep_upper = keep_upper  # blocks above `layer` kept (not run) for the tuned expert

    def config(self) -> dict:
        cfg: dict[str, Any] = {
            "model": self.model_name,
            "layer": self.layer,
            "max_tokens": self.max_tokens,
            "context": self.context,
            "context_tokens": self.context_tokens,
        }
        if self.window != 1:  # absent for the one-turn context: its cache key and coder.json stay as they were
            cfg["window"] = self.window
        if self.history:
            cfg["history"] = self.history
        return cfg

    def contexts_of(self, items: Sequence[Any]) -> list[str]:
        return contexts_for(self, items)

    @classmethod
    def from_config(cls, cfg: dict, cache_dir: Path | None = None) -> Embedder:
        return cls(cache_dir=cache_dir, **cfg)

    # -- model
    def _ensure(self) -> None:
        if self._model is not None:
            return
        import torch
        import transformers

        from mi_llm.llm.load import load_model
        from mi_llm.llm.resolve import resolve_model

        rm = resolve_model(self.model_name)
        key = (str(rm.path), rm.sha256, self.layer, self.keep_upper)
        with _stacks_lock:
            stack = _stacks.get(key)
            if stack is None:
                transformers.utils.logging.disable_progress_bar()  # our own progress bar is enough
                model, tok = load_model(rm, dtype=torch.float32, device="cpu")
                inner = _decoder(model)
                n = len(inner.layers)
                if not 1 <= self.layer <= n:
                    from mi_llm.errors import MiLlmError

                    raise MiLlmError(f"embedding layer {self.layer} out of range 1..{n} for {self.model_name}")
                # Only the first `layer` blocks run: the rest (and the LM head) are dropped, except
                # `keep_upper` blocks just above, kept at hand for the tuned expert (`tuned.py`).
                upper = list(inner.layers[self.layer : self.layer + self.keep_upper])
                inner.layers = inner.layers[: self.layer]
                # The stack returns the raw residual stream (what the next block reads); the final
                # norm is applied here for the pooled vectors.
                final_norm = inner.norm
                inner.norm = torch.nn.Identity()
                stack = _Stack(inner, tok, final_norm, upper, n)
                _stacks.clear()  # one stack at a time: a few hundred MB each
                _stacks[key] = stack
        self.n_layers = stack.n_layers
        self.upper_layers = stack.upper_layers
        self.final_norm = stack.final_norm
        self._model, self._tok = stack.model, stack.tokenizer
        ident = rm.sha256 or str(rm.path)
        # the history only joins vectors: the same vectors (and cache) as without it
        self._tag = _key(ident, str({k: v for k, v in self.config().items() if k != "history"}))[:16]
        from mi_llm.llm.home import mi_llm_home

        root = self._cache_dir or os.environ.get("MI_LLM_EMBED_CACHE") or mi_llm_home() / "cache" / "embeddings"
        self._cache = EmbeddingCache(Path(root) / self._tag)

    @property
    def dim(self) -> int:
        self._ensure()
        return int(self._model.config.hidden_size)

    # -- encoding
    def _encode_one(self, text: str, context: str) -> tuple[list[int], int]:
        """Token ids and the index where the utterance's own tokens start."""
        tok = self._tok
        body = tok(" " + text.strip(), add_special_tokens=False)["input_ids"][: self.max_tokens]
        head = [tok.bos_token_id] if tok.bos_token_id is not None else []
        if self.context and self.window > 1:
            # rendered lines, each with its speaker (`render_window`); the most recent matter most
            ctx = tok(context.strip(), add_special_tokens=False)["input_ids"] if context.strip() else []
            head += ctx[-self.context_tokens :]
            head += tok(f"\n{self.speaker}:" if ctx else f"{self.speaker}:", add_special_tokens=False)["input_ids"]
        elif self.context:
            ctx = tok(context.strip(), add_special_tokens=False)["input_ids"] if context.strip() else []
            ctx = ctx[-self.context_tokens :]  # the end of the client's turn matters most
            head += tok(f"{self.context_speaker}:", add_special_tokens=False)["input_ids"] + ctx
            head += tok(f"\n{self.speaker}:", add_special_tokens=False)["input_ids"]
        else:
            head += tok(f"{self.speaker}:", add_special_tokens=False)["input_ids"]
        return head + body, len(head)

    def embed(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None, progress: Progress | None = None
    ) -> np.ndarray:
        """(n, hidden) float32 vectors; cached ones are not recomputed."""
        import torch

        self._ensure()
        contexts = list(contexts) if contexts is not None else [""] * len(texts)
        if not self.context:
            contexts = [""] * len(texts)
        keys = [_key(t, c) for t, c in zip(texts, contexts)]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: list[int] = []
        for i, k in enumerate(keys):
            v = self._cache.get(k)  # type: ignore[union-attr]
            if v is None:
                todo.append(i)
            else:
                out[i] = v
        done = len(texts) - len(todo)
        if progress:
            progress(done, len(texts))
        if not todo:
            return out
        t0 = time.monotonic()
        new_keys: list[str] = []
        new_vecs: list[np.ndarray] = []
        with torch.inference_mode():
            for idx, hs, pool, _ in self._forward(texts, contexts, todo):
                vec = mean_pool(self.final_norm(hs), pool).float().numpy()
                for r, i in enumerate(idx):
                    out[i] = vec[r]
                    new_keys.append(keys[i])
                    new_vecs.append(vec[r])
                done += len(idx)
                if progress:
                    progress(done, len(texts))
                if len(new_keys) >= 2048:  # flush now and then: an interrupted run keeps its work
                    self._cache.put_many(new_keys, np.stack(new_vecs))  # type: ignore[union-attr]
                    new_keys, new_vecs = [], []
        self._cache.put_many(new_keys, np.stack(new_vecs) if new_vecs else np.zeros((0, self.dim)))  # type: ignore[union-attr]
        log.info(
            "embedded %d utterances in %.1f s (%d from cache)", len(todo), time.monotonic() - t0, len(texts) - len(todo)
        )
        return out

    def _forward(self, texts: Sequence[str], contexts: Sequence[str], todo: Sequence[int]):
        """Per batch: indices, raw hidden states (b, t, h), utterance-token mask (b, t), and
        (utterance start, length) of each sequence."""
        import torch

        encoded = {i: self._encode_one(texts[i], contexts[i]) for i in todo}
        # Similar lengths together: less padding, much less work.
        order = sorted(todo, key=lambda i: len(encoded[i][0]))
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [encoded[i][0] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            att = torch.zeros((len(seqs), width), dtype=torch.long)
            pool = torch.zeros((len(seqs), width), dtype=torch.float32)
            for r, (s, i) in enumerate(zip(seqs, idx)):
                ids[r, : len(s)] = torch.tensor(s)
                att[r, : len(s)] = 1
                pool[r, encoded[i][1] : len(s)] = 1.0
            hs = self._model(input_ids=ids, attention_mask=att).last_hidden_state
            yield idx, hs, pool, [(encoded[i][1], len(encoded[i][0])) for i in idx]

    def token_states(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None, progress: Progress | None = None
    ) -> list[tuple[object, int]]:
        """Per utterance: (the raw hidden states of layer `layer` over its tokens, bf16 tensor
        (tokens, hidden); the index of the utterance's first own token). Kept in memory with
        `keep_states`, never on disk (about 1.3 KB a token)."""
        import torch

        self._ensure()
        contexts = list(contexts) if contexts is not None and self.context else [""] * len(texts)
        out: list[tuple[object, int]] = [(None, 0)] * len(texts)
        keys = [_key(t, c) for t, c in zip(texts, contexts)]
        todo = []
        for i, k in enumerate(keys):
            if self._states is not None and k in self._states:
                out[i] = self._states[k]
            else:
                todo.append(i)
        done = len(texts) - len(todo)
        with torch.inference_mode():
            for idx, hs, _, spans in self._forward(texts, contexts, todo):
                for r, (i, (start, n)) in enumerate(zip(idx, spans)):
                    # bf16, not fp16: the residual stream of some positions exceeds fp16's range.
                    out[i] = (hs[r, :n].to(torch.bfloat16).clone(), start)
                    if self._states is not None:
                        self._states[keys[i]] = out[i]
                done += len(idx)
                if progress:
                    progress(done, len(texts))
        return out


SPEAKERS = {"client": "Client", "counselor": "Counselor"}


def embed_items(embedder: Any, items: Sequence[Any], progress: Progress | None = None) -> np.ndarray:
    """The embedding block of each item (anything with `text`, `context` and `window`).

    Its own vector; with `embedder.history` = k >= 1, joined by the vector of the counselor's
    previous utterance in the window (read, like every counselor utterance, after the client's
    turn before it) and, for k >= 2, the mean vector of up to k - 1 counselor utterances before
    that one (zeros where there are none). These are the vectors of utterances coded earlier
    in the same conversation, so the history costs no new pass of the embedded model: a
    conversation's context read at the price of its utterances."""
    k = getattr(embedder, "history", 0)
    own_contexts = contexts_for(embedder, items)
    if not k:
        return embedder.embed([it.text for it in items], own_contexts, progress=progress)
    # every (text, context) to embed: the items', then their earlier counselor utterances'
    pairs: dict[tuple[str, str], int] = {}
    for it, ctx in zip(items, own_contexts):
        pairs.setdefault((it.text, ctx), len(pairs))
    earlier: list[list[int]] = []
    for it in items:
        refs: list[int] = []
        window = list(it.window)
        for j in range(len(window) - 1, -1, -1):
            role, text = window[j]
            if role != "counselor" or not text.strip() or len(refs) >= k:
                continue
            before = window[:j]
            client = next((t for r, t in reversed(before) if r == "client"), "")
            ctx = render_window(before, client, embedder.window) if getattr(embedder, "window", 1) > 1 else client
            refs.append(pairs.setdefault((text.strip(), ctx), len(pairs)))
        earlier.append(refs)
    keys = list(pairs)
    vecs = embedder.embed([t for t, _ in keys], [c for _, c in keys], progress=progress)
    n, dim = len(items), vecs.shape[1]
    blocks = [vecs[[pairs[(it.text, c)] for it, c in zip(items, own_contexts)]], np.zeros((n, dim), np.float32)]
    if k >= 2:
        blocks.append(np.zeros((n, dim), np.float32))
    for i, refs in enumerate(earlier):
        if refs:
            blocks[1][i] = vecs[refs[0]]
        if k >= 2 and len(refs) > 1:
            blocks[2][i] = vecs[refs[1:]].mean(axis=0)
    return np.hstack(blocks).astype(np.float32)


def contexts_for(embedder: Any, items: Sequence[Any]) -> list[str]:
    """What `embedder` reads before each item's utterance (items: anything with `context` and
    `window`, e.g. `labels.Example`, `base.Item`): the client's previous turn, or, for an
    embedder with `window` > 1, the rendered lines of the conversation before it."""
    size = getattr(embedder, "window", 1)
    if size <= 1:
        return [it.context for it in items]
    return [render_window(it.window, it.context, size) for it in items]


def render_window(window: Sequence[tuple[str, str]], context: str, size: int) -> str:
    """The last `size` utterances before the coded one, one "Speaker: text" line each, oldest
    first. `window` is [(role, text)] with role "client" or "counselor"; without one, the
    `context` alone (the client's previous turn) is the window."""
    turns = [(r, t) for r, t in window if t.strip()] if window else ([("client", context)] if context.strip() else [])
    return "\n".join(f"{SPEAKERS.get(r, r)}: {' '.join(t.split())}" for r, t in turns[-size:])


def mean_pool(hs, mask):
    """(b, t, h) states averaged over the positions where the (b, t) mask is 1."""
    return (hs * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)


def _decoder(model):  # the transformer stack of a *ForCausalLM (layers + final norm)
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if inner is not None and hasattr(inner, "language_model"):
        return inner.language_model
    raise TypeError(f"cannot find the decoder layers of {type(model).__name__}")
