"""`--precision`: what auto picks, and bf16 training learning what fp32 learns."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mi_llm.train.config import TrainConfig
from mi_llm.train.precision import cpu_description, cpu_has_native_bf16, resolve_precision
from tests.train.conftest import train_at_high_lr

ZEN4 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
HASWELL = frozenset({"avx2", "fma"})

# bf16 keeps 8 bits of mantissa: per-step losses of the same data may differ by about 2^-8
# relative per rounding; over a few steps of training the curves must stay this close
# (measured here: at most 0.2% apart over 8 steps).
LOSS_RTOL = 0.01


def test_auto_is_bf16_only_where_it_is_native():
    assert resolve_precision("auto", cuda=False, flags=ZEN4) == "bf16"
    assert resolve_precision("auto", cuda=False, flags=SAPPHIRE_RAPIDS) == "bf16"
    assert resolve_precision("auto", cuda=False, flags=HASWELL) == "fp32"
    assert resolve_precision("auto", cuda=False, flags=frozenset()) == "fp32"
    assert resolve_precision("auto", cuda=True, cuda_bf16=True, flags=HASWELL) == "bf16"
    assert resolve_precision("auto", cuda=True, cuda_bf16=False, flags=ZEN4) == "fp32"
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, cuda=False, flags=HASWELL) == explicit
    with pytest.raises(ValueError, match="expected fp32, bf16 or auto"):
        resolve_precision("fp16", cuda=False)
    assert cpu_has_native_bf16(ZEN4) and not cpu_has_native_bf16(HASWELL)
    d = cpu_description()
    assert set(d) == {"cpu", "cores", "flags", "native_bf16"}


def test_bad_precision_is_refused():
    with pytest.raises(ValueError):
        TrainConfig(data="x", output="y", precision="fp16")


def _run(model, data, out, precision):
    log, conf = train_at_high_lr(model, data, out, 8, precision=precision)
    return log, conf, load_file(str(out / "adapter_model.safetensors"))


def test_bf16_loss_curve_follows_fp32(tiny_gemma_learnable, build_dir, tmp_path):
    """Same data, same seed, 8 steps at a high learning rate (so the curve moves): every step's
    bf16 loss within LOSS_RTOL of fp32's; the LoRA weights are saved in fp32 either way."""
    fp32_log, fp32_conf, fp32_ad = _run(tiny_gemma_learnable, build_dir, tmp_path / "fp32", "fp32")
    bf16_log, bf16_conf, bf16_ad = _run(tiny_gemma_learnable, build_dir, tmp_path / "bf16", "bf16")
    assert fp32_conf["runtime"]["precision"] == "fp32" and fp32_conf["runtime"]["mixed_precision"] == "no"
    assert bf16_conf["runtime"]["precision"] == "bf16" and bf16_conf["runtime"]["mixed_precision"] == "bf16"
    assert "flags" in bf16_conf["runtime"]["cpu"]
    assert fp32_log[-1] < 0.8 * fp32_log[0], fp32_log  # it learned, so the comparison means something
    print("fp32", fp32_log, "bf16", bf16_log)
    for step, (a, b) in enumerate(zip(fp32_log, bf16_log, strict=True), 1):
        assert b == pytest.approx(a, rel=LOSS_RTOL), (step, fp32_log, bf16_log)
    assert all(v.dtype == torch.float32 for v in bf16_ad.values())
    # bf16 really ran (Adam's normalised steps amplify rounding, so the weights are not compared
    # for closeness: the losses above are what must agree)
    assert any(not torch.equal(bf16_ad[k], fp32_ad[k]) for k in fp32_ad)
