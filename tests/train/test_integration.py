"""The real embedded model (gemma-3-270m, 262k vocabulary): 2 LoRA steps, merge, GGUF."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import require_setup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    from mi_llm.build.stage import build
    from mi_llm.resources import demo_files

    out = tmp_path_factory.mktemp("demo-build")
    build(demo_files("en", "mi"), out, train=3, test=1, seed=1)
    return out


@pytest.fixture(scope="module")
def trained(demo_build, tmp_path_factory):
    from mi_llm.train.config import TrainConfig
    from mi_llm.train.sft import train

    out = tmp_path_factory.mktemp("run") / "adapter"
    r = train(
        TrainConfig(data=str(demo_build), output=str(out), max_steps=2, grad_accum=2, max_length=256),
        show_progress=False,
    )
    return r


def test_two_steps_on_the_embedded_model(trained):
    r = trained
    assert r.steps == 2 and not r.interrupted
    # The pretrained model already predicts these replies (measured 3.9); weights that were
    # converted wrongly from the GGUF score near or above uniform, ln(262144) = 12.5. That
    # the loss falls with training is tests/train/test_sft.py's overfitting test.
    assert 0 < r.final_loss < 6
    assert r.peak_rss_mb > 0  # the 3 GB target is measured by benchmarks/bench_train.py, not asserted here
    conf = json.loads((r.output / "train_config.json").read_text())
    assert conf["model"]["name"] == "gemma-3-270m" and conf["data"]["max_tokens"] <= 256
    assert json.loads((r.output / "adapter_config.json").read_text())["base_model_name_or_path"] == "gemma-3-270m"


def _converter_available() -> bool:
    from mi_llm.errors import MiLlmError
    from mi_llm.train.gguf import find_converter

    try:
        find_converter(fetch=False)  # tests never download: the converter must be cached
        return True
    except MiLlmError:
        return False


def test_export_merged_and_gguf_q8_0_loads_in_llama_cpp(trained, tmp_path):
    require_setup(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python (make venv builds it)")
    require_setup(
        _converter_available(), "llama.cpp's converter is not cached: run `python -m mi_llm.train.gguf --fetch` once"
    )
    from mi_llm.llm.llamacpp_runtime import import_llama_cpp
    from mi_llm.train.export import export

    Llama = import_llama_cpp().Llama  # a runtime-dispatch build loads its CPU backend first

    r = export(None, trained.output, tmp_path / "merged", gguf_types=["q8_0"])
    gguf = r.gguf["q8_0"]
    assert gguf.stat().st_size > 100 * 2**20
    llm = Llama(model_path=str(gguf), n_ctx=256, verbose=False, seed=0)
    out = llm.create_completion(
        "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", max_tokens=8, temperature=0
    )
    assert out["usage"]["completion_tokens"] >= 1
    # the exported vocabulary tokenizes like the model's own tokenizer
    from mi_llm.llm.load import load_tokenizer

    tok = load_tokenizer("gemma-3-270m")
    for text in ("I want to stop smoking, but it's hard.", "我最近压力很大，睡不好。"):
        assert llm.tokenize(text.encode(), add_bos=False) == tok(text, add_special_tokens=False)["input_ids"]


def test_slow_tokenizer_path_on_the_embedded_vocabulary():
    """As tests/train/test_data.py, on Gemma's 262k-entry SentencePiece-style BPE (byte
    fallback, no dummy prefix: as Baichuan2's): the pieces between reply edges tokenize as
    they do inside the whole text."""
    from mi_llm.llm.load import load_tokenizer
    from tests.train.conftest import assert_slow_path_equals_fast

    assert_slow_path_equals_fast(load_tokenizer("gemma-3-270m"))
