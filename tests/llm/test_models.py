"""Model resolution, chat templates and the training masks, on a tiny local model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm import home, templates
from mi_llm.llm.load import load_model, load_tokenizer, stop_token_ids
from mi_llm.llm.resolve import resolve_model
from mi_llm.llm.templates import (
    FAMILIES,
    IGNORE_INDEX,
    encode_chat,
    encode_prompt,
    family_for_model_type,
    render_prompt,
)

CONV = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "I smoke a lot."},
    {"role": "assistant", "content": "How do you feel about it?"},
    {"role": "user", "content": "Bad."},
    {"role": "assistant", "content": "听起来你想改变。"},
]


def test_resolve_local_folder(tiny_model: Path) -> None:
    rm = resolve_model(str(tiny_model))
    assert rm.path == tiny_model.resolve()
    assert rm.family == "gemma"
    assert rm.source == "local"
    assert rm.stop_tokens == ("<end_of_turn>",)
    assert "<start_of_turn>" in rm.chat_template


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(MiLlmError) as e:
        resolve_model("no-such-model")
    assert "gemma-3-270m" in str(e.value) and "qwen2.5-7b-instruct" in str(e.value)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(MiLlmError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MiLlmError, match="not available.*HF_HUB_OFFLINE"):
        resolve_model("someorg/some-model-that-is-not-cached")


def test_family_detection() -> None:
    assert family_for_model_type("gemma3_text").name == "gemma"
    assert family_for_model_type("qwen2").name == "chatml"
    assert family_for_model_type("llama", 128256).name == "llama3"
    assert family_for_model_type("llama", 32000).name == "default"
    assert family_for_model_type("something-new").name == "default"


def test_gemma_template_folds_system_into_first_user_turn(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    text = render_prompt(tok, CONV[:4])
    assert text == (
        "<bos><start_of_turn>user\nBe kind.\n\nI smoke a lot.<end_of_turn>\n"
        "<start_of_turn>model\nHow do you feel about it?<end_of_turn>\n"
        "<start_of_turn>user\nBad.<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.pad_token is not None
    assert tok.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(tok)


@pytest.mark.parametrize("family", ["chatml", "llama3", "baichuan2", "glm4", "default"])
def test_other_family_templates_render_prefix_by_prefix(tiny_model: Path, family: str) -> None:
    tok = load_tokenizer(str(tiny_model))
    tok.chat_template = FAMILIES[family].template
    full = render_prompt(tok, CONV, add_generation_prompt=False)
    prompt = render_prompt(tok, CONV[:-1])
    assert full.startswith(prompt) and full[len(prompt) :].startswith("听起来你想改变。")
    assert "Be kind." in full


def test_encode_chat_labels_only_assistant_turns(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    ids, labels = encode_chat(tok, CONV)
    assert len(ids) == len(labels)
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert learned == "How do you feel about it?<end_of_turn>\n听起来你想改变。<end_of_turn>\n"
    # labels equal the ids where they are set
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels))
    # the prompt of the last turn is a prefix of the training ids, as at inference
    prompt = encode_prompt(tok, CONV[:-1])
    assert ids[: len(prompt)] == prompt
    assert tok.decode([t for t, lab in zip(ids[len(prompt) :], labels[len(prompt) :]) if lab != IGNORE_INDEX]) == (
        "听起来你想改变。<end_of_turn>\n"
    )


def test_encode_chat_last_only(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    ids, labels = encode_chat(tok, CONV, last_only=True)
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert learned == "听起来你想改变。<end_of_turn>\n"


def test_encode_chat_slow_path_agrees(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = load_tokenizer(str(tiny_model))
    fast = encode_chat(tok, CONV)
    monkeypatch.setattr(templates, "_encode_with_offsets", lambda *a: None)
    slow = encode_chat(tok, CONV)
    assert (
        slow == fast
    )  # the same ids and the same labels, not just as many (tests/train/test_data.py: a real slow tokenizer)
    assert any(lab != IGNORE_INDEX for lab in fast[1])


def test_bad_roles_are_a_clear_error(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    with pytest.raises(MiLlmError, match="alternate"):
        render_prompt(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_sha256_is_cached_and_invalidated(tmp_path: Path) -> None:
    f = tmp_path / "x.gguf"
    f.write_bytes(b"abc")
    first = home.file_sha256(f)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    cache = json.loads((tmp_path / "x.gguf.sha256.json").read_text())
    assert cache["sha256"] == first
    # a cached value is trusted while size and mtime match ...
    (tmp_path / "x.gguf.sha256.json").write_text(json.dumps({**cache, "sha256": "cached"}))
    assert home.file_sha256(f) == "cached"
    # ... and recomputed when the file changes
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 1))
    assert home.file_sha256(f) != "cached"


def test_load_model_defaults_to_fp32_on_cpu(tiny_model: Path) -> None:
    import torch

    model, tok = load_model(str(tiny_model), device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training
    assert tok.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id


def test_tokenizer_is_loaded_once_per_process_until_its_files_change(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    first = load_tokenizer(str(folder))
    second = load_tokenizer(str(folder))
    assert second._tokenizer is first._tokenizer  # the demo's stages share one load ...
    second.chat_template = "{{ messages }}"
    second.mi_llm_stop_ids.append(-1)
    third = load_tokenizer(str(folder))  # ... and what one caller sets stays its own
    assert third.chat_template == first.chat_template != second.chat_template
    assert -1 not in third.mi_llm_stop_ids
    cfg = folder / "tokenizer_config.json"
    st = cfg.stat()
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the files changed: load again
    again = load_tokenizer(str(folder))
    assert again._tokenizer is not first._tokenizer and again.chat_template == first.chat_template


def test_a_gguf_is_parsed_once_within_a_conversion(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from mi_llm.llm.embedded import gguf_parsed_once

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with gguf_parsed_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first  # the tokenizer, config and weights share one parse
        assert bytes(first.fields["general.architecture"].parts[-1]).decode() == "gemma3"
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(str(path)) is not first


def test_the_plain_array_reader_reads_what_ggufs_own_reader_reads(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from mi_llm.llm.embedded import _plain_array_reader

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(2)
    writer.add_token_list([f"tok{i}" for i in range(300)] + ["你好", ""])
    writer.add_token_scores([float(i) / 7 for i in range(302)])
    writer.add_token_types([i % 3 for i in range(302)])
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, theirs = _plain_array_reader(gguf.GGUFReader)(str(path)), gguf.GGUFReader(str(path))
    assert not isinstance(ours.data, np.memmap) and isinstance(theirs.data, np.memmap)
    assert list(ours.fields) == list(theirs.fields)
    for name, field in theirs.fields.items():
        mine = ours.fields[name]
        assert mine.data == field.data and mine.types == field.types, name
        assert len(mine.parts) == len(field.parts), name
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine.parts, field.parts)), name
    tokens = ours.fields["tokenizer.ggml.tokens"]
    assert bytes(tokens.parts[tokens.data[-2]]).decode() == "你好"
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert np.array_equal(ours.tensors[0].data, theirs.tensors[0].data)
    from mi_llm.llm.lora_gguf import gguf_arch

    assert gguf_arch(path) == "gemma3"  # through mi_llm.llm.embedded.read_gguf
