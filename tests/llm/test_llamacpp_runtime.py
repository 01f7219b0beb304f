"""llama.cpp safety: the build works on this CPU (a real decode in a child process), a crash in
the child is a one-line error naming the signal and the CPU, and the backend choice follows."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm import llamacpp_runtime as rt
from tests.conftest import needs_setup, require_setup

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_LLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(rt.SKIP_ENV, raising=False)
    return tmp_path / "home"


def _crashing_child(tmp_path: Path, how: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text("import os, signal, sys\n" + how + "\n")
    return [sys.executable, str(script)]


@pytest.mark.integration
def test_a_real_decode_of_the_embedded_gguf_survives_in_a_child_process() -> None:
    """The issue's crash (SIGSEGV in llama_decode on AMX CPUs): this fails with the signal and flags."""
    require_setup(HAS_LLAMA_CPP, "llama-cpp-python (make venv builds it)")
    result = rt.run_probe()
    assert result.ok, f"{result.detail} [CPU flags: {rt.simd_flags()}]"
    assert "AVX" in result.system_info or "x86" not in os.uname().machine


def test_a_crash_in_the_child_names_the_signal_and_the_cpu_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        rt, "probe_command", lambda gguf: _crashing_child(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)")
    )
    result = rt.run_probe(gguf=tmp_path / "x.gguf")
    assert not result.ok
    assert "SIGSEGV" in result.detail and "x.gguf" in result.detail
    assert rt.simd_flags() in result.detail and "\n" not in result.detail


def test_a_child_that_fails_without_a_signal_is_reported_in_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        rt, "probe_command", lambda gguf: _crashing_child(tmp_path, "print('boom\\nbad', file=sys.stderr); sys.exit(3)")
    )
    result = rt.run_probe(gguf=tmp_path / "x.gguf")
    assert not result.ok and "exit 3" in result.detail and "bad" in result.detail and "\n" not in result.detail


def test_a_hung_child_is_a_timeout_not_a_hang(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rt, "probe_command", lambda gguf: _crashing_child(tmp_path, "import time; time.sleep(60)"))
    result = rt.run_probe(gguf=tmp_path / "x.gguf", timeout=1)
    assert not result.ok and "did not finish" in result.detail


@needs_setup(HAS_LLAMA_CPP, "llama-cpp-python (the probe cache is keyed by the installed build)")
def test_the_probe_runs_once_per_build_and_cpu_and_a_crash_is_exit_2_or_a_fallback(home, monkeypatch, caplog) -> None:
    calls = []

    def fake_run_probe():
        calls.append(1)
        return rt.ProbeResult(False, "llama.cpp died with SIGSEGV in a test decode of m.gguf (CPU: x; flags: amx_int8)")

    monkeypatch.setattr(rt, "run_probe", fake_run_probe)
    with pytest.raises(MiLlmError, match="SIGSEGV.*--backend hf") as e:
        rt.ensure_usable(explicit=True)
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.WARNING):
        assert rt.ensure_usable(explicit=False) is False
    assert "using the hf backend" in caplog.text
    assert len(calls) == 1, "the result is cached per build and CPU"
    cached = list((home / "llamacpp-probe").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["ok"] is False

    from mi_llm.llm.backends import get_backend, resolve_auto_backend

    assert resolve_auto_backend() == "hf"
    with pytest.raises(MiLlmError, match="not usable on this machine"):
        get_backend("llamacpp", "gemma-3-270m")


@needs_setup(HAS_LLAMA_CPP, "llama-cpp-python (make venv builds it)")
def test_a_timeout_is_not_cached(home, monkeypatch) -> None:
    results = iter(
        [rt.ProbeResult(False, "a test decode did not finish in 300 s"), rt.ProbeResult(True, "decoded 8 tokens")]
    )
    monkeypatch.setattr(rt, "run_probe", lambda: next(results))
    assert not rt.probe().ok
    assert rt.probe().ok and rt.probe().ok  # second ran the probe again; third came from the cache


@needs_setup(HAS_LLAMA_CPP, "llama-cpp-python (make venv builds it)")
def test_cli_with_llamacpp_asked_by_name_stops_with_exit_2_when_the_probe_fails(
    home, monkeypatch, tmp_path, capsys
) -> None:
    from mi_llm.cli import main

    monkeypatch.setattr(
        rt, "run_probe", lambda: rt.ProbeResult(False, "llama.cpp died with SIGSEGV (CPU: x; flags: amx_int8)")
    )
    samples = tmp_path / "s.jsonl"
    samples.write_text("")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--backend", "llamacpp", "--data", str(samples), "-o", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    # the error is one line (a progress log line about the check may come before it)
    errors = [line for line in err.splitlines() if "not usable on this machine" in line]
    assert e.value.code == 2 and len(errors) == 1 and "SIGSEGV" in errors[0] and "--backend hf" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.integration
def test_the_build_dispatches_at_run_time_without_the_amx_variant() -> None:
    """`make venv` installs tools/llama_cpp/build.sh's wheel: CPU variants, none with AMX kernels,
    and the best one this CPU supports is the one loaded."""
    require_setup(HAS_LLAMA_CPP, "llama-cpp-python (make venv builds it)")
    import llama_cpp

    variants = [p.name for p in rt.cpu_variants(llama_cpp)]
    marker = rt.lib_dir(llama_cpp) / rt.BUILD_MARKER
    require_setup(marker.is_file(), "llama-cpp-python was not built by tools/llama_cpp/build.sh (run make venv)")
    assert "libggml-cpu-haswell.so" in variants and "libggml-cpu-x64.so" in variants
    assert not any("sapphirerapids" in v for v in variants), variants
    result = rt.run_probe()
    assert result.ok, result.detail
    flags = set(rt.cpu_flags())
    if {"avx512f", "avx512_vnni", "avx512vbmi", "avx512_bf16"} <= flags:
        assert "AVX512_BF16 = 1" in result.system_info and "AMX_INT8 = 1" not in result.system_info
    elif "avx2" in flags:
        assert "AVX2 = 1" in result.system_info


# The x86-64 level of each shipped CPU variant: the /proc/cpuinfo flags it needs, and a feature
# llama.cpp's system info then reports (tools/llama_cpp/cpu_variants.cmake).
VARIANT_NEEDS = {
    "x64": ((), None),
    "sse42": (("sse4_2",), "SSE3"),
    "sandybridge": (("avx",), "AVX"),
    "haswell": (("avx2", "fma", "f16c", "bmi2"), "AVX2"),
    "alderlake": (("avx2", "fma", "f16c", "bmi2", "avx_vnni"), "AVX_VNNI"),
    "skylakex": (("avx512f",), "AVX512"),
    "cascadelake": (("avx512f", "avx512_vnni"), "AVX512_VNNI"),
    "icelake": (("avx512f", "avx512vbmi", "avx512_vnni"), "AVX512_VBMI"),
    "zen4": (("avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16"), "AVX512_BF16"),
}


def _installed_variants():
    if not HAS_LLAMA_CPP:
        return []
    import llama_cpp

    return rt.cpu_variants(llama_cpp)


@pytest.mark.integration
@pytest.mark.skipif(not _installed_variants(), reason="not a runtime-dispatch build (tools/llama_cpp/build.sh)")
def test_every_shipped_variant_decodes_or_is_refused_cleanly(tmp_path, monkeypatch) -> None:
    """What an AVX2-only, an AVX-512 or an older CPU would run, each forced in turn on this CPU:
    the levels this CPU has decode; the others are refused with a message, never SIGILL."""
    import llama_cpp

    lib = rt.lib_dir(llama_cpp)
    variants = {p.name[len("libggml-cpu-") : -len(".so")]: p for p in rt.cpu_variants(llama_cpp)}
    assert set(variants) == set(VARIANT_NEEDS), "cpu_variants.cmake and this table must name the same levels"
    flags = set(rt.cpu_flags())
    for name, path in variants.items():
        only = tmp_path / name
        only.mkdir()
        for p in lib.iterdir():
            if p.name.startswith("lib") and not p.name.startswith("libggml-cpu-"):
                (only / p.name).symlink_to(p)
        (only / path.name).symlink_to(path)
        monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(only))
        result = rt.run_probe()
        needs, feature = VARIANT_NEEDS[name]
        if set(needs) <= flags:
            assert result.ok, f"{name}: {result.detail}"
            if feature:
                assert f"{feature} = 1" in result.system_info, (name, result.system_info)
        else:
            assert not result.ok and "no llama.cpp CPU backend loads" in result.detail, (name, result.detail)


@pytest.mark.integration
@pytest.mark.skipif(not _installed_variants(), reason="not a runtime-dispatch build (tools/llama_cpp/build.sh)")
def test_no_shipped_library_contains_amx_instructions() -> None:
    """The AMX kernels (the segfault) are not in the build: no tile instruction in any library."""
    import shutil

    import llama_cpp

    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not installed")
    import subprocess

    for lib in sorted(rt.lib_dir(llama_cpp).glob("*.so")):
        asm = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True
        ).stdout
        tile = [
            line
            for line in asm.splitlines()
            if any(op in line for op in ("ldtilecfg", "tdpbssd", "tdpbf16ps", "tileloadd"))
        ]
        assert not tile, f"{lib.name}: AMX instructions, e.g. {tile[0].strip()}"
