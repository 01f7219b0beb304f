"""Chat templates per model family (Jinja, as transformers' `apply_chat_template` uses them).

Each family names its end-of-turn marker: generation stops there, and training puts it in
the labels so the model learns to end its reply.

Roles are the OpenAI ones: `system`, `user`, `assistant`.

Below the families, the template applied to a conversation with a tokenizer: the prompt
that asks for the next reply (`encode_prompt`), and the training ids with the labels on the
assistant turns only (`encode_chat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mi_llm.errors import MiLlmError

IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's cross-entropy default)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    end_of_turn: str | None  # marker that closes an assistant turn; None = the tokenizer's eos
    model_types: tuple[str, ...] = ()  # config.json `model_type` values of this family
    trust_remote_code: bool = False  # the family's official checkpoints ship their own code
    extra_stops: tuple[str, ...] = ()  # further tokens that end generation

    def stop_tokens(self) -> tuple[str, ...]:
        return ((self.end_of_turn,) if self.end_of_turn else ()) + self.extra_stops


# Gemma (as in google/gemma-3-*-it): the system text is folded into the first user turn,
# the assistant speaks as "model". `<start_of_turn>`/`<end_of_turn>` are single tokens.
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
{{- message['content'] | trim -}}
{{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}"""

# Llama 3 (Llama3-8B-Chinese-Chat and Meta's instruct models).
LLAMA3 = """{{ bos_token }}
{%- for message in messages -%}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif -%}"""

# ChatML (Qwen2 / Qwen2.5). Qwen adds a default system prompt when none is given; ours always
# has one, so the plain form is used.
CHATML = """{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\n' }}
{%- endif -%}"""

# Baichuan2-Chat: reserved tokens 195 (<reserved_106>, user) and 196 (<reserved_107>,
# assistant); the system text goes first, bare (as LLaMA-Factory's `baichuan2` template).
BAICHUAN2 = """{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] }}
{%- elif message['role'] == 'user' -%}
{{ '<reserved_106>' + message['content'] }}
{%- else -%}
{{ '<reserved_107>' + message['content'] + eos_token }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<reserved_107>' }}
{%- endif -%}"""

# GLM-4-Chat (as THUDM/glm-4-9b-chat): turns open with a role token; an assistant turn ends
# where the next role token (or <|endoftext|>) begins.
GLM4 = """[gMASK]<sop>
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\n' + message['content'] }}
{%- if message['role'] == 'assistant' -%}{{ '<|endoftext|>' }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\n' }}
{%- endif -%}"""

# Default for a base model of an unknown family without its own template: plain text
# headings, and the tokenizer's eos closes each reply.
DEFAULT = """{{ bos_token if bos_token else '' }}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] | trim + '\n\n' }}
{%- elif message['role'] == 'user' -%}
{{ '### User:\n' + message['content'] | trim + '\n\n' }}
{%- else -%}
{{ '### Assistant:\n' + message['content'] | trim + eos_token + '\n\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '### Assistant:\n' }}
{%- endif -%}"""

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("gemma", GEMMA, "<end_of_turn>", ("gemma", "gemma2", "gemma3", "gemma3_text")),
        Family("llama3", LLAMA3, "<|eot_id|>", ("llama",)),
        Family("chatml", CHATML, "<|im_end|>", ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")),
        Family("baichuan2", BAICHUAN2, None, ("baichuan",), trust_remote_code=True),
        Family(
            "glm4",
            GLM4,
            None,
            ("chatglm", "glm4", "glm"),
            trust_remote_code=True,
            extra_stops=("<|user|>", "<|observation|>"),
        ),
        Family("default", DEFAULT, None),
    )
}


def family_for_model_type(model_type: str | None, vocab_size: int | None = None) -> Family:
    """The family of a config.json `model_type`; unknown types get the default template."""
    if model_type:
        for fam in FAMILIES.values():
            if model_type in fam.model_types:
                # Llama 1/2 vocabularies (32k) have no Llama 3 header tokens.
                if fam.name == "llama3" and vocab_size is not None and vocab_size < 128000:
                    return FAMILIES["default"]
                return fam
    return FAMILIES["default"]


def end_of_turn_ids(tok: Any, stops: Sequence[str]) -> list[int]:
    """Ids of the tokenizer's eos and of the `stops` it knows (a family's `stop_tokens()`)."""
    ids: list[int] = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    unk = tok.unk_token_id
    for s in stops:
        i = tok.convert_tokens_to_ids(s)
        if isinstance(i, int) and i != unk and i not in ids:
            ids.append(i)
    return ids


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The chat template applied to `messages`, as text (special tokens included)."""
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # noqa: BLE001 - jinja errors (e.g. roles that do not alternate)
        raise MiLlmError(f"chat template failed: {e}") from None


def shared_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two prompts share (what a KV cache of one can serve the other)."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def split_prefill(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(the conversation, the start of the assistant's reply): a conversation that ends with
    an assistant message asks the model to go on from that text (e.g. a forced strategy tag)."""
    if messages and messages[-1]["role"] == "assistant":
        return list(messages[:-1]), messages[-1]["content"]
    return list(messages), ""


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt that asks for the next assistant reply (going on from a last
    assistant message, when there is one: `split_prefill`)."""
    messages, prefill = split_prefill(messages)
    text = render_prompt(tokenizer, messages, add_generation_prompt=True) + prefill
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
            raise MiLlmError(
                "the chat template does not render conversations prefix by prefix; "
                "cannot locate the assistant replies for the loss"
            )
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
