"""DPO / KTO on a tiny model: the loss at the reference, shared prompt = plain path, learning,
resume, starting from an SFT adapter, located errors in the pairs file."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from mi_llm.build.samples import read_samples
from mi_llm.errors import InputError, MiLlmError
from mi_llm.prefs.pairs import PreferencePair, ScoredReply, write_pairs
from mi_llm.train.config import TrainConfig
from mi_llm.train.preference import PreferenceTrainer, encode_pair, train_preferences
from mi_llm.train.sft import train

CHOSEN = "It sounds like you want change ."
REJECTED = "How do you feel ?"


def make_pairs(build_dir, path, n=None):
    samples = read_samples(build_dir / "samples.train.jsonl")[:n]
    chosen = ScoredReply(text=CHOSEN, score=3.0, codes=["CR"])
    rejected = ScoredReply(text=REJECTED, score=1.0, codes=["Q"])
    pairs = [PreferencePair.of_sample(s, chosen, rejected) for s in samples]
    write_pairs(path, pairs)
    return path


def cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output=str(out),
        method="dpo",
        max_steps=3,
        grad_accum=2,
        save_steps=100,
        lora_r=4,
        lora_alpha=8,
        warmup_ratio=0.0,
        precision="fp32",  # exact comparisons: bf16 (auto on a CPU with bf16) rounds each path differently
    )
    base.update(kw)
    return TrainConfig(**base)


def log_of(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture()
def pairs_file(build_dir, tmp_path):
    return make_pairs(build_dir, tmp_path / "prefs.jsonl")


def test_encode_pair_shares_the_prompt_and_cuts_history_alike(tiny_gemma, pairs_file):
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.prefs.pairs import read_pairs

    tok = load_tokenizer(str(tiny_gemma))
    pair = max(read_pairs(pairs_file), key=lambda p: len(p.history))
    assert pair.history
    whole = encode_pair(pair, tok, 1024)
    c, r = whole.chosen, whole.rejected
    assert c.input_ids[: whole.prefix] == r.input_ids[: whole.prefix]
    first_label = next(i for i, x in enumerate(c.labels) if x != -100)
    assert whole.prefix == first_label - 1  # everything before the reply's first predicted token
    # a budget that only the shorter reply would fit with all history: both lose the same rounds
    tight = encode_pair(pair, tok, len(c) - 1)
    assert tight.chosen.dropped_rounds == tight.rejected.dropped_rounds >= 1
    assert tight.chosen.input_ids[: tight.prefix] == tight.rejected.input_ids[: tight.prefix]


@pytest.mark.parametrize(("method", "first_loss"), [("dpo", math.log(2)), ("kto", 0.5)])
def test_the_first_step_starts_at_the_reference(tiny_gemma, pairs_file, tmp_path, method, first_loss):
    out = tmp_path / method
    r = train_preferences(cfg(tiny_gemma, pairs_file, out, method=method), show_progress=False)
    assert r.steps == 3 and not r.interrupted
    log = log_of(out)
    assert log[0]["loss"] == pytest.approx(first_loss, abs=1e-5)  # policy == reference before step 1
    assert log[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert {"pairs", "reward_chosen", "reward_rejected", "reward_accuracy"} <= set(log[0])
    conf = json.loads((out / "train_config.json").read_text())
    assert conf["result"]["method"] == method and conf["result"]["pairs"] == 6
    assert conf["data"]["shared_prompt_tokens"] > 0 and conf["result"]["prefix_tokens_saved"] > 0
    ref = json.loads((out / "ref_logps.json").read_text())
    n_pairs = len(pairs_file.read_text().splitlines())
    assert len(ref["logps"]) == n_pairs and all(len(v) == (3 if method == "kto" else 2) for v in ref["logps"].values())
    assert all(v.abs().sum() > 0 for k, v in adapter(out).items() if "lora_B" in k)


def test_shared_prompt_equals_the_plain_path(tiny_gemma, pairs_file, tmp_path):
    a, b = tmp_path / "shared", tmp_path / "plain"
    train_preferences(cfg(tiny_gemma, pairs_file, a), show_progress=False)
    train_preferences(cfg(tiny_gemma, pairs_file, b, share_prefix=False), show_progress=False)
    assert json.loads((a / "train_config.json").read_text())["result"]["shared_prefix"]
    assert not json.loads((b / "train_config.json").read_text())["result"]["shared_prefix"]
    wa, wb = adapter(a), adapter(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert [x["loss"] for x in log_of(a)] == pytest.approx([x["loss"] for x in log_of(b)], abs=1e-5)


def test_dpo_learns_to_prefer_the_chosen_reply(tiny_gemma_learnable, build_dir, tmp_path):
    pairs = make_pairs(build_dir, tmp_path / "four.jsonl", n=4)
    out = tmp_path / "run"
    train_preferences(
        cfg(
            tiny_gemma_learnable,
            pairs,
            out,
            max_steps=12,
            grad_accum=4,
            lr=1e-2,
            lr_scheduler="constant_with_warmup",
            beta=0.5,
        ),
        show_progress=False,
    )
    log = log_of(out)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], [x["loss"] for x in log]
    assert log[-1]["reward_margin"] > 1.0 and log[-1]["reward_accuracy"] == 1.0


def test_resume_reuses_the_reference_and_equals_an_uninterrupted_run(tiny_gemma, pairs_file, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_preferences(cfg(tiny_gemma, pairs_file, whole, max_steps=4), show_progress=False)
    out = tmp_path / "cut"

    def stop_at_2(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    r = train_preferences(cfg(tiny_gemma, pairs_file, out, max_steps=4), show_progress=False, on_step=stop_at_2)
    assert r.interrupted and r.steps == 2

    def no_recompute(self):
        raise AssertionError("the reference must not be recomputed on resume")

    monkeypatch.setattr(PreferenceTrainer, "_compute_reference", no_recompute)
    r2 = train_preferences(cfg(tiny_gemma, pairs_file, out, max_steps=4), resume=True, show_progress=False)
    assert r2.steps == 4
    a, b = adapter(whole), adapter(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-7)
    monkeypatch.undo()  # a new run computes its reference
    cut2 = tmp_path / "cut2"
    train_preferences(cfg(tiny_gemma, pairs_file, cut2, max_steps=4), show_progress=False, on_step=stop_at_2)
    (cut2 / "ref_logps.json").unlink()
    with pytest.raises(MiLlmError, match="reference log-probs of this run are missing"):
        train_preferences(cfg(tiny_gemma, pairs_file, cut2, max_steps=4), resume=True, show_progress=False)


def test_dpo_continues_the_sft_adapter_which_is_the_reference(tiny_gemma, build_dir, pairs_file, tmp_path):
    from peft import PeftModel

    from mi_llm.llm.load import load_model, load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.prefs.pairs import read_pairs
    from mi_llm.train.loss import SelectiveLMLoss
    from mi_llm.train.preference import sequence_logp_sums

    sft = tmp_path / "sft"
    train(
        TrainConfig(
            model=str(tiny_gemma),
            data=str(build_dir),
            output=str(sft),
            max_steps=2,
            lora_r=2,
            lora_alpha=4,
            precision="fp32",
        ),
        show_progress=False,
    )
    out = tmp_path / "dpo"
    train_preferences(cfg(tiny_gemma, pairs_file, out, adapter=str(sft), max_steps=1), show_progress=False)
    assert adapter(out)["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 2  # SFT's rank
    # the saved reference = the SFT model's log-probs (its own adapter, not the bare base)
    rm = resolve_model(str(tiny_gemma))
    base, _ = load_model(rm, dtype=torch.float32, device="cpu")
    module = SelectiveLMLoss(PeftModel.from_pretrained(base, str(sft))).eval()
    pair = read_pairs(pairs_file)[0]
    ex = encode_pair(pair, load_tokenizer(str(tiny_gemma)), 1024)
    with torch.no_grad():
        (pc, pr), _ = sequence_logp_sums(module, [ex.chosen, ex.rejected], 0, "cpu")
    saved = json.loads((out / "ref_logps.json").read_text())["logps"][pair.pair_id]
    assert saved[0] == pytest.approx(float(pc), abs=1e-4) and saved[1] == pytest.approx(float(pr), abs=1e-4)


def test_option_and_data_errors(tiny_gemma, build_dir, pairs_file, tmp_path, capsys):
    with pytest.raises(MiLlmError, match="one pair per micro-batch"):
        train_preferences(cfg(tiny_gemma, pairs_file, tmp_path / "b", batch_size=2), show_progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pairs_file.read_text().splitlines()[0] + '\n{"pair_id": 1}\n')
    with pytest.raises(InputError) as e:
        train_preferences(cfg(tiny_gemma, bad, tmp_path / "c"), show_progress=False)
    assert str(e.value).startswith(f"{bad}:2: ")
    from mi_llm.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["train", "--method", "dpo", "--model", str(tiny_gemma), "--data", str(bad), "-o", str(tmp_path / "d")])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"{bad}:2: ")
    with pytest.raises(MiLlmError, match="not a LoRA adapter folder"):
        train_preferences(cfg(tiny_gemma, pairs_file, tmp_path / "e", adapter=str(build_dir)), show_progress=False)
