"""transformers backend: batched decoding with left padding and a KV cache.

Prompts are sorted by length so a batch pads little; rows that finish leave the batch
(their cache rows are dropped), so long replies do not make short ones cost more.
A PEFT LoRA adapter is merged into the weights once at load time (same outputs, no
per-token adapter cost). `stream_chat` streams one conversation with transformers'
`TextIteratorStreamer` (generation in a thread; cancelled by a stopping criterion).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.layout import ADAPTER_CONFIG, AdapterPaths
from mi_llm.llm.backends.base import (
    BACKENDS,
    Backend,
    Completion,
    Finish,
    GenerationConfig,
    LeadingSpaceTrimmer,
    Messages,
    StopTrimmer,
    first_stop,
    fit_context,
)

log = logging.getLogger(__name__)


def check_adapter(adapter: str | Path, base_path: Path) -> dict[str, Any]:
    """The adapter's PEFT config; a clear error when it is missing or made for another base."""
    adapter = Path(adapter)
    cfg_path = AdapterPaths(adapter).peft_config
    if not cfg_path.is_file():
        raise MiLlmError(f"{adapter}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MiLlmError(f"{cfg_path}: invalid JSON ({e})") from None
    # Compare the architecture the adapter was trained on with the base we load.
    trained = cfg.get("mi_llm_base_config") or _base_config_of(cfg.get("base_model_name_or_path"))
    if trained:
        base_cfg = json.loads((base_path / "config.json").read_text(encoding="utf-8"))
        for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
            if key in trained and key in base_cfg and trained[key] != base_cfg[key]:
                raise MiLlmError(
                    f"{adapter}: adapter was trained on a different base model ({key} {trained[key]} != "
                    f"{base_cfg[key]} in {base_path}); pass the --model it was trained on"
                )
    return cfg


def _base_config_of(base: str | None) -> dict[str, Any] | None:
    if base and (Path(base) / "config.json").is_file():
        try:
            return json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
        except ValueError:
            return None
    return None


def apply_adapter(model: Any, adapter: str | Path, base_path: Path, merge: bool = True) -> Any:
    """Load a PEFT adapter onto `model` (merged into the weights by default)."""
    from peft import PeftModel

    check_adapter(adapter, base_path)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:  # shape mismatch, missing modules
        raise MiLlmError(
            f"{adapter}: adapter does not fit the base model {base_path}: {str(e).splitlines()[0]}"
        ) from None
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model


@BACKENDS.register("hf")
class HFBackend(Backend):
    name = "hf"

    def __init__(
        self,
        model: Any,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 16,
        merge_adapter: bool = True,
        **_: Any,
    ):
        from mi_llm.llm.load import load_model, stop_token_ids
        from mi_llm.llm.resolve import resolve_model

        self.resolved = model if not isinstance(model, (str, Path)) else resolve_model(model)
        self.model, self.tokenizer = load_model(self.resolved, dtype=dtype, device=device)
        self.adapter = str(adapter) if adapter else None
        if adapter:
            self.model = apply_adapter(self.model, adapter, self.resolved.path, merge=merge_adapter)
        self.device = next(self.model.parameters()).device
        self.batch_size = max(1, int(batch_size))
        self.stop_ids = stop_token_ids(self.tokenizer)
        if not self.stop_ids:
            raise MiLlmError(f"{self.resolved.path}: the tokenizer has no eos token; cannot tell where a reply ends")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.resolved.describe(),
            "adapter": self.adapter,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "batch_size": self.batch_size,
        }

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        from mi_llm.llm.templates import encode_prompt

        prompts = [encode_prompt(self.tokenizer, m) for m in batch]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            outs = self.generate_ids([prompts[i] for i in idx], config)
            for i, (ids, finished) in zip(idx, outs):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                text, cut = first_stop(text, config.stop)
                results[i] = Completion(
                    text=text.strip(),
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=len(ids),
                    finish_reason="stop" if finished or cut else "length",
                )
        return [r for r in results if r is not None]

    def stream_chat(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from mi_llm.llm.templates import encode_prompt

        cancel_event = cancel or threading.Event()
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        _, prompt = fit_context(messages, lambda m: encode_prompt(self.tokenizer, m), limit, config.max_new_tokens)

        class Counting(TextIteratorStreamer):
            n = 0

            def put(self, value: Any) -> None:
                if self.next_tokens_are_prompt is False:
                    self.n += int(value.numel())
                super().put(value)

        stop_early = threading.Event()  # the caller's cancel, or a stop string seen here

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                done = cancel_event.is_set() or stop_early.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        streamer = Counting(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        ids = torch.tensor([prompt], device=self.device)
        kwargs: dict[str, Any] = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=config.max_new_tokens,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            do_sample=config.do_sample,
            repetition_penalty=config.repetition_penalty,
        )
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None)
            if config.seed is not None:
                torch.manual_seed(config.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        error: list[BaseException] = []
        model = self.model

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="mi-llm-hf-generate", daemon=True)
        thread.start()
        trim, lead = StopTrimmer(config.stop), LeadingSpaceTrimmer()
        drained = False
        try:
            for piece in streamer:
                text = lead.feed(trim.feed(piece))
                if text:
                    yield text
                if trim.stopped:
                    stop_early.set()  # a stop string: end generation early
            drained = True
        finally:
            if not drained:  # the consumer left early: stop generating, let the thread finish
                stop_early.set()
                for _ in streamer:
                    pass
            thread.join()
        if error:
            raise error[0]
        tail = lead.feed(trim.flush())
        if tail:
            yield tail
        n = streamer.n
        reason = (
            "stop"
            if trim.stopped
            else "cancelled"
            if cancel_event.is_set()
            else "stop"
            if n < config.max_new_tokens
            else "length"
        )
        yield Finish(reason, len(prompt), n)

    def generate_ids(self, prompts: Sequence[list[int]], config: GenerationConfig) -> list[tuple[list[int], bool]]:
        """Decode a batch of token-id prompts; per row (generated ids without the stop token, stopped?)."""
        import torch
        from transformers import DynamicCache

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise MiLlmError("empty prompt")
        n = len(prompts)
        width = max(len(p) for p in prompts)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and width + config.max_new_tokens > limit:
            raise MiLlmError(
                f"prompt of {width} tokens + {config.max_new_tokens} new tokens exceeds the model's "
                f"context of {limit} tokens"
            )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        processors = self._processors(config)
        gen = None
        if config.do_sample:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(config.seed if config.seed is not None else int(time.time()))
        stop = torch.tensor(self.stop_ids, device=self.device)
        out: list[list[int]] = [[] for _ in range(n)]
        stopped = [False] * n
        alive = list(range(n))  # original row of each cache row
        history = ids  # for the repetition penalty
        cache = DynamicCache(config=self.model.config)
        step_ids, step_pos = ids, pos
        cache_kw = self._cache_kwarg()
        with torch.inference_mode():
            for step in range(config.max_new_tokens):
                logits = (
                    self.model(
                        input_ids=step_ids,
                        attention_mask=mask,
                        position_ids=step_pos,
                        use_cache=True,
                        logits_to_keep=1,
                        **{cache_kw: cache},
                    )
                    .logits[:, -1, :]
                    .float()
                )
                if processors:
                    logits = processors(history, logits)
                if config.do_sample:
                    probs = torch.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                else:
                    nxt = logits.argmax(dim=-1)
                done = torch.isin(nxt, stop)
                nxt_list, done_list = nxt.tolist(), done.tolist()
                for k, row in enumerate(alive):
                    if done_list[k]:
                        stopped[row] = True
                    else:
                        out[row].append(nxt_list[k])
                if step == config.max_new_tokens - 1:
                    break
                if any(done_list):
                    keep = [k for k, d in enumerate(done_list) if not d]
                    if not keep:
                        break
                    sel = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(sel)
                    alive = [alive[k] for k in keep]
                    mask, nxt, step_pos = mask[sel], nxt[sel], step_pos[sel]
                    history = history[sel]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                step_pos = step_pos[:, -1:] + 1
                step_ids = nxt[:, None]
                if processors:
                    history = torch.cat([history, step_ids], dim=1)
        return [(out[r], stopped[r]) for r in range(n)]

    def _cache_kwarg(self) -> str:
        # transformers >= 5.2x names the KV cache argument `cache`; older models say past_key_values.
        import inspect

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # PEFT wraps
        params = inspect.signature(base.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _processors(self, config: GenerationConfig) -> Any:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.do_sample:
            if config.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k > 0:
                procs.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                procs.append(TopPLogitsWarper(config.top_p))
        return procs or None

    def close(self) -> None:
        self.model = None
