"""The OpenAI chat-completions wire format: request validation and response objects.

Extensions (ignored by OpenAI's own API, accepted by the `openai` client through
`extra_body` / `extra_headers`):
- `session_id` (body) or `X-Session-Id` (header): keep the conversation on the server.
- `language`: "zh" | "en" (default: detected from the message).
Responses carry `mi_llm: {session_id, safety: {crisis, category}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mi_llm.io import describe_validation_error


class ApiError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    session_id: str | None = None
    language: Literal["zh", "en"] | None = None


def parse_request(raw: bytes) -> ChatRequest:
    try:
        obj = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return ChatRequest.model_validate(obj)
    except ValidationError as e:
        raise ApiError(400, describe_validation_error(e)) from None


def _text(content: str | list[dict[str, Any]] | None, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages.{i}.content: only text parts are supported")
        parts.append(part["text"])
    return "".join(parts)


def normalize_messages(messages: list[ChatMessage], max_messages: int) -> list[dict[str, str]]:
    """OpenAI messages -> [{role, content}] with roles system|user|assistant, ending on a user turn."""
    if len(messages) > max_messages:
        raise ApiError(400, f"too many messages ({len(messages)}; the limit is {max_messages})")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages.{i}.role: {m.role!r} is not supported (system, user, assistant)")
        out.append({"role": role, "content": _text(m.content, i)})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message")
    if not out[-1]["content"].strip():
        raise ApiError(400, "the last user message is empty")
    return out


def conversation(system: str, history: list[dict[str, str]], user: str) -> list[dict[str, str]]:
    """System prompt + alternating history + the new user turn (merging same-role neighbours,
    which chat templates such as Gemma's refuse). A reply's strategy `code` (session store)
    stays with it, for a strategy policy (serve.engine.StrategyEngine)."""
    turns: list[dict[str, str]] = []
    for m in [*history, {"role": "user", "content": user}]:
        if m["role"] == "system":
            continue
        code = {"code": m["code"]} if m.get("code") else {}
        if turns and turns[-1]["role"] == m["role"]:
            turns[-1] = {"role": m["role"], "content": turns[-1]["content"] + "\n\n" + m["content"], **code}
        else:
            turns.append({"role": m["role"], "content": m["content"], **code})
    while turns and turns[0]["role"] != "user":  # a conversation opens with the client
        turns.pop(0)
    return [{"role": "system", "content": system}, *turns]


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion_body(
    rid: str, model: str, text: str, finish: str, usage: dict[str, int], ext: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage,
        "mi_llm": ext,
    }


def chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    ext: dict[str, Any] | None = None,
) -> str:
    """One server-sent event `data: {...}` of a chat.completion.chunk."""
    obj: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        obj["usage"] = usage
    if ext is not None:
        obj["mi_llm"] = ext
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
