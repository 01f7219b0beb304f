"""Runs llama.cpp's HF -> GGUF converter in a process of its own (see mi_llm.train.gguf).

    python -m mi_llm.train.gguf_runner --llama-cpp DIR --model HF_DIR --outfile F --outtype f16
        [--vocab-from ORIGINAL.gguf] [--chat-template-file T.jinja]

Run as a separate process because llama.cpp's `gguf-py` must shadow the installed `gguf`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def _copy_vocab(reader: Any, writer: Any, gguf: Any) -> int:
    """Copy every tokenizer.ggml.* key of the original GGUF (tokens, scores, types, merges,
    special ids): the vocabulary llama.cpp already tokenizes this model with."""
    n = 0
    for key, fld in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        main = fld.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            sub = fld.types[-1]
            writer.add_key_value(key, fld.contents(), main, sub_type=sub)
        else:
            writer.add_key_value(key, fld.contents(), main)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--outfile", required=True, type=Path)
    ap.add_argument("--outtype", required=True, choices=["f32", "f16", "bf16", "q8_0"])
    ap.add_argument("--vocab-from", type=Path)
    ap.add_argument("--chat-template-file", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    sys.path.insert(0, str(a.llama_cpp / "gguf-py"))
    sys.path.insert(0, str(a.llama_cpp))
    import gguf  # llama.cpp's own copy, matching its converter
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[a.outtype]
    template = a.chat_template_file.read_text(encoding="utf-8") if a.chat_template_file else None
    with torch.inference_mode():
        hparams = ModelBase.load_hparams(a.model, False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
        base_cls = get_model_class(arch, mmproj=False)
        vocab_from = a.vocab_from

        class Converter(base_cls):  # type: ignore[misc, valid-type]
            # The converter insists every subclass names its architecture itself.
            model_arch = base_cls.model_arch

            def set_vocab(self) -> None:
                if vocab_from is not None:
                    reader = gguf.GGUFReader(vocab_from)
                    if not _copy_vocab(reader, self.gguf_writer, gguf):
                        raise SystemExit(f"{vocab_from}: no tokenizer.ggml.* keys to copy")
                else:
                    super().set_vocab()
                if template:
                    self.gguf_writer.remove_key(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
                    self.gguf_writer.add_chat_template(template)

        Converter.__name__ = base_cls.__name__
        model = Converter(a.model, ftype, a.outfile)
        model.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
