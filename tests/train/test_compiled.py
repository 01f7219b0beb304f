"""`--compile`: when auto compiles, and a compiled run learning what an eager one learns."""

from __future__ import annotations

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.train import compiled
from mi_llm.train.compiled import COMPILE_MIN_TOKENS, choose_compile
from mi_llm.train.config import TrainConfig
from tests.train.conftest import train_at_high_lr


def test_auto_compiles_long_single_process_sft_runs_on_a_cpu_only():
    long, short = COMPILE_MIN_TOKENS, COMPILE_MIN_TOKENS - 1
    assert choose_compile("auto", "cpu", 1, "sft", long).compile
    assert not choose_compile("auto", "cpu", 1, "sft", short).compile
    assert "would not repay" in choose_compile("auto", "cpu", 1, "sft", short).reason
    assert not choose_compile("auto", "cpu", 2, "sft", long).compile
    assert not choose_compile("auto", "cpu", 1, "dpo", long).compile
    assert not choose_compile("auto", "cuda", 1, "sft", long).compile
    assert choose_compile("on", "cuda", 4, "dpo", 10).compile
    assert not choose_compile("off", "cpu", 1, "sft", long).compile


def test_no_cxx_compiler(monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    choice = choose_compile("auto", "cpu", 1, "sft", COMPILE_MIN_TOKENS)
    assert not choice.compile and "C++ compiler" in choice.reason
    with pytest.raises(MiLlmError, match="--compile on: no C\\+\\+ compiler"):
        choose_compile("on", "cpu", 1, "sft", 10)


def test_bad_compile_mode_is_refused():
    with pytest.raises(ValueError):
        TrainConfig(data="x", output="y", compile="yes")


def _run(model, data, out, mode):
    return train_at_high_lr(model, data, out, 4, precision="fp32", compile=mode)


@pytest.mark.skipif(compiled.cxx_compiler() is None, reason="no C++ compiler for Inductor's CPU kernels")
def test_compiled_run_learns_what_eager_learns(tiny_gemma_learnable, build_dir, tmp_path, monkeypatch):
    """The same data and seed, eager against compiled layers (which also turns the shared
    prefix off): every step's loss within 1e-3 relative (fp32; measured: ~1e-6)."""
    monkeypatch.setenv(compiled.INDUCTOR_CACHE_ENV, str(tmp_path / "inductor"))
    eager_log, eager_conf = _run(tiny_gemma_learnable, build_dir, tmp_path / "eager", "off")
    comp_log, comp_conf = _run(tiny_gemma_learnable, build_dir, tmp_path / "compiled", "on")
    assert eager_conf["runtime"]["compiled_layers"] == 0 and eager_conf["result"]["shared_prefix"]
    layers = comp_conf["runtime"]["compiled_layers"]
    assert layers >= 1 and not comp_conf["result"]["shared_prefix"]
    assert comp_conf["runtime"]["compile"] == "--compile on"
    assert any((tmp_path / "inductor").rglob("*.so"))  # kernels built, and cached where we said
    print("eager", eager_log, "compiled", comp_log)
    assert eager_log[-1] < eager_log[0], eager_log
    for step, (a, b) in enumerate(zip(eager_log, comp_log, strict=True), 1):
        assert b == pytest.approx(a, rel=1e-3), (step, eager_log, comp_log)
