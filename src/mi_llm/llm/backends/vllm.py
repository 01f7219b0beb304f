"""vLLM in process (continuous batching on a GPU), when vLLM is installed.

Prompts are the same token ids the hf backend builds (our chat template), so the two
backends see identical inputs; a LoRA adapter is served by vLLM's LoRA support.
vLLM's offline engine has no token stream: `stream_chat` sends the whole reply as one piece
(for streamed replies from vLLM, run `vllm serve` and use the openai backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import BACKENDS, Backend, Completion, GenerationConfig, Messages, first_stop


@BACKENDS.register("vllm")
class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model: Any,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        **_: Any,
    ):
        try:
            import vllm
        except ImportError:
            raise MiLlmError(
                "the vllm backend needs vLLM on a CUDA machine: pip install vllm "
                "(or serve the model with `vllm serve` and use --backend openai)"
            ) from None
        from mi_llm.llm.backends.hf import check_adapter
        from mi_llm.llm.load import load_tokenizer, stop_token_ids
        from mi_llm.llm.resolve import resolve_model

        if device not in (None, "cuda") and not str(device).startswith("cuda"):
            raise MiLlmError(f"the vllm backend runs on CUDA only (got --device {device})")
        self.resolved = model if not isinstance(model, (str, Path)) else resolve_model(model)
        self.tokenizer = load_tokenizer(self.resolved)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.adapter = str(adapter) if adapter else None
        kwargs: dict[str, Any] = dict(
            model=str(self.resolved.path),
            dtype=dtype,
            trust_remote_code=self.resolved.trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=0,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self._lora = None
        if adapter:
            cfg = check_adapter(adapter, self.resolved.path)
            kwargs.update(enable_lora=True, max_lora_rank=max(8, int(cfg.get("r", 8))))
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(Path(adapter).resolve()))
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.resolved.describe(),
            "adapter": self.adapter,
            "vllm": getattr(self._vllm, "__version__", None),
        }

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        from mi_llm.llm.templates import encode_prompt

        prompts = [encode_prompt(self.tokenizer, m) for m in batch]
        params = self._vllm.SamplingParams(
            n=1,
            max_tokens=config.max_new_tokens,
            temperature=config.temperature if config.do_sample else 0.0,
            top_p=config.top_p if config.do_sample else 1.0,
            top_k=config.top_k if config.do_sample and config.top_k > 0 else -1,
            repetition_penalty=config.repetition_penalty,
            seed=config.seed,
            stop_token_ids=self.stop_ids,
            stop=list(config.stop) or None,
            skip_special_tokens=True,
        )
        inputs = [{"prompt_token_ids": p} for p in prompts]
        outs = self.llm.generate(inputs, params, lora_request=self._lora, use_tqdm=False)
        results = []
        for p, o in zip(prompts, outs):
            c = o.outputs[0]
            ids = [t for t in c.token_ids if t not in self.stop_ids]
            text, _ = first_stop(c.text, config.stop)
            results.append(Completion(text.strip(), len(p), len(ids), c.finish_reason))
        return results

    def close(self) -> None:
        self.llm = None
