"""Chat templates per model family (Jinja, as transformers' `apply_chat_template` uses them).

Each family names its end-of-turn marker: generation stops there, and training puts it in
the labels so the model learns to end its reply.

Roles are the OpenAI ones: `system`, `user`, `assistant`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        Family("glm4", GLM4, None, ("chatglm", "glm4", "glm"), trust_remote_code=True,
               extra_stops=("<|user|>", "<|observation|>")),
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
