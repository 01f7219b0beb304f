"""Strategy-then-response in simulated sessions (`mi-llm simulate --strategy`): a scripted
counselor that writes tags as a strategy-trained model does, and records its prompts."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from mi_llm.build.strategy import StrategyPolicy, format_tag, split_tag, turn_code
from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.layout import SIMULATED_SESSIONS
from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.runner import simulate
from tests.fuzz.helpers import run_cli
from tests.simulate.conftest import REFLECTIVE, ScriptedClient

WRITTEN = "SR"  # the code the tagging counselor writes when nothing is forced


class TaggingCounselor(Backend):
    """Reflective replies that open with a tag, as a counselor trained on "[CR] reply" targets
    writes them; after a forced tag (an assistant prefill) it goes on with the reply only."""

    name = "tagging-counselor"

    def __init__(self) -> None:
        self.prompts: list[Messages] = []

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        out = []
        for messages in batch:
            self.prompts.append(list(messages))
            prefilled = messages[-1]["role"] == "assistant"
            k = sum(1 for m in messages if m["role"] == "assistant") - prefilled
            line = REFLECTIVE["en"][k % len(REFLECTIVE["en"])]
            out.append(Completion(f" {line}" if prefilled else f"{format_tag(WRITTEN)} {line}", 10, 10, "stop"))
        return out


class RecordingClient(ScriptedClient):
    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[Messages] = []

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        self.prompts += [list(m) for m in batch]
        return super().generate(batch, config)


def config(**changes) -> SimulateConfig:
    return SimulateConfig(**{"sessions": 3, "max_rounds": 4, "retry_wait_s": 0, "personas": "demo:en", **changes})


def run(out, coder, cfg, counselor=None, client=None):
    counselor = counselor or TaggingCounselor()
    client = client or RecordingClient()
    simulate(cfg, load_personas(cfg.personas), counselor, client, coder, out)
    return read_dialogues(out / SIMULATED_SESSIONS), counselor, client


def counselor_turns(sessions: list[Dialogue]):
    return [t for d in sessions for t in d.turns if t.role == "counselor"]


def no_tag_anywhere(sessions: list[Dialogue], client: RecordingClient) -> None:
    for d in sessions:
        for t in d.turns:
            assert split_tag(t.text)[0] is None and "[" not in t.text
            assert all("[" not in u.text for u in t.codes or [])  # nor in what the MITI coder coded
    seen = [m["content"] for prompt in client.prompts for m in prompt]
    assert client.prompts and not any(format_tag(WRITTEN) in text for text in seen)


@pytest.mark.parametrize("spec", [None, "model"])
def test_a_written_tag_is_cut_and_its_code_kept(tmp_path, miti_coder, spec):
    sessions, counselor, client = run(tmp_path, miti_coder, config(strategy=spec))
    no_tag_anywhere(sessions, client)
    assert all(p[-1]["role"] == "user" for p in counselor.prompts)  # nothing prefilled
    turns = counselor_turns(sessions)
    assert turns and all(t.text == t.text.strip() and t.text in REFLECTIVE["en"] for t in turns)
    expected = {"code": WRITTEN} if spec is None else {"strategy": "model", "requested": None, "code": WRITTEN}
    assert all(t.meta == expected for t in turns)


def test_a_forced_code_is_the_assistants_prefill(tmp_path, miti_coder):
    sessions, counselor, client = run(tmp_path, miti_coder, config(strategy="CR"))
    no_tag_anywhere(sessions, client)
    assert counselor.prompts and all(p[-1] == {"role": "assistant", "content": "[CR]"} for p in counselor.prompts)
    turns = counselor_turns(sessions)
    assert len(turns) == len(counselor.prompts)
    assert all(t.meta == {"strategy": "CR", "requested": "CR", "code": "CR"} for t in turns)
    # the prefill is the model's own turn: the conversation before it is the usual one
    assert all(p[-2]["role"] == "user" for p in counselor.prompts)


def test_a_policy_reads_the_codes_the_coder_gave_earlier_turns(tmp_path, miti_coder):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("opening: Q\nreflections_per_question: 1\nreflection: CR\n", encoding="utf-8")
    policy = StrategyPolicy(opening="Q", reflections_per_question=1, reflection="CR")
    sessions, counselor, client = run(tmp_path / "out", miti_coder, config(strategy=f"policy:{policy_file}"))
    no_tag_anywhere(sessions, client)
    asked_codes = []
    for d in sessions:
        turns = [t for t in d.turns if t.role == "counselor"]
        for k, t in enumerate(turns):
            # the codes the MITI coder heard in the earlier replies, not the codes asked for
            previous = [turn_code(u.code for u in x.codes or []) for x in turns[:k]]
            assert t.meta["requested"] == policy.choose(previous) == t.meta["code"]
            assert t.meta["strategy"] == f"policy:{policy_file}"
            asked_codes.append(t.meta["requested"])
    prefills = [p[-1]["content"] for p in counselor.prompts]
    assert sorted(prefills) == sorted(format_tag(c) for c in asked_codes)
    # the replies are reflections, whatever was asked: asking from the asked codes would alternate
    # Q, CR, Q...; asking from the coded ones asks a question again after a coded reflection
    assert asked_codes.count("Q") > len(sessions)


def test_a_rerun_with_another_strategy_is_refused(tmp_path, miti_coder):
    run(tmp_path, miti_coder, config(strategy="CR"))
    for other in ("SR", "model", None):
        with pytest.raises(MiLlmError, match="other settings .*strategy"):
            run(tmp_path, miti_coder, config(strategy=other))
    run(tmp_path, miti_coder, config(strategy="CR", sessions=4))  # the same strategy resumes


def test_the_strategy_is_checked_and_keyed_only_when_set(tmp_path):
    with pytest.raises(ValidationError, match="not a MITI code"):
        config(strategy="XX")
    assert "strategy" not in config().run_key()  # sessions from before --strategy still resume
    assert config(strategy="CR").run_key()["strategy"] == "CR"
    with pytest.raises(MiLlmError, match="no such policy file"):
        config(strategy=f"policy:{tmp_path / 'none.yaml'}").steering()


@pytest.mark.parametrize(
    "spec, message",
    [("XX", "--strategy: 'XX' is not a MITI code"), ("policy:{dir}/none.yaml", "no such policy file")],
)
def test_the_cli_refuses_a_bad_strategy_in_one_line(tmp_path, spec, message):
    out = tmp_path / "out"
    argv = ["simulate", "--strategy", spec.format(dir=tmp_path), "-o", str(out), "--backend", "no-such-backend"]
    r = run_cli(argv)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not out.exists()


def test_the_cli_locates_a_bad_policy(tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("opening: Q\nreflection: Confront\n", encoding="utf-8")
    r = run_cli(["simulate", "--strategy", f"policy:{policy_file}", "-o", str(tmp_path / "out")])
    assert r.code == 2 and r.err.strip().startswith(f"{policy_file}:2: reflection"), r.err
    assert len(r.err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the pipeline's simulate stage


@pytest.fixture
def tagging(monkeypatch, miti_coder):
    """The fine-tuned (adapter) counselor writes tags; the base model confronts and plays the client."""
    import mi_llm.miti.coders as coders
    import mi_llm.miti.coders.client_talk as client_talk
    from mi_llm.simulate import stage
    from tests.simulate.conftest import CONFRONTATIONAL, KeywordTalkCoder
    from tests.simulate.test_simulate_pipeline import Dual

    counselors: list[TaggingCounselor] = []

    def load(side):
        if side.adapter:
            counselors.append(TaggingCounselor())
            return counselors[-1]
        return Dual(CONFRONTATIONAL)

    monkeypatch.setattr(stage.Side, "load", load)
    monkeypatch.setattr(coders, "load_coder", lambda name: miti_coder)
    monkeypatch.setattr(client_talk, "load_client_coder", lambda name: KeywordTalkCoder())
    return counselors


def strategy_experiment(generation: dict, **simulate):
    from mi_llm.config import ExperimentConfig

    simulate = {"max_rounds": 3, **simulate}
    return ExperimentConfig(
        name="s",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        models=[{"name": "gemma-3-270m", "label": "m", "backend": "llamacpp"}],
        generation=generation,
        simulate={"enabled": True, "client_backend": "llamacpp", "personas": "demo:en", "sessions": 2, **simulate},
    )


def test_steered_systems_are_simulated_only_when_asked(tmp_path):
    policy = tmp_path / "expert.yaml"
    policy.write_text("opening: Q\n", encoding="utf-8")
    generation = {"strategy": "model", "strategies": ["CR", f"policy:{policy}"]}
    cfg = strategy_experiment(generation)
    assert [s for _, _, s in cfg.simulated_systems()] == ["base", "finetuned"]
    assert cfg.strategy_of("finetuned") == "model" and cfg.strategy_of("base") is None
    steered = strategy_experiment(generation, steered=True)
    assert [s for _, _, s in steered.simulated_systems()] == [
        "base",
        "finetuned",
        "finetuned-CR",
        "finetuned-policy-expert",
    ]
    with pytest.raises(ValueError, match="simulate.strategy is set by the pipeline"):
        strategy_experiment(generation, strategy="CR")


def test_the_simulate_stage_runs_each_system_with_its_strategy(tmp_path, tagging):
    from mi_llm.layout import RunPaths
    from tests.simulate.test_simulate_pipeline import fake_adapter, run_stages

    policy = tmp_path / "expert.yaml"
    policy.write_text("opening: Q\nreflections_per_question: 1\n", encoding="utf-8")
    generation = {"strategy": "model", "strategies": ["CR", f"policy:{policy}"]}
    cfg = strategy_experiment(generation, steered=True)
    paths = RunPaths(tmp_path / "run")
    fake_adapter(paths)
    names = ["m/simulate-base", "m/simulate-finetuned", "m/simulate-finetuned-CR", "m/simulate-finetuned-policy-expert"]
    assert run_stages(cfg, paths) == [(n, False) for n in names]

    def metas(system: str) -> list[dict]:
        return [t.meta for t in counselor_turns(read_dialogues(paths.simulate("m", system).sessions))]

    assert all(m == {} for m in metas("base"))  # no strategy, no tag: nothing recorded
    assert all(m == {"strategy": "model", "requested": None, "code": WRITTEN} for m in metas("finetuned"))
    assert all(m == {"strategy": "CR", "requested": "CR", "code": "CR"} for m in metas("finetuned-CR"))
    expert = StrategyPolicy(opening="Q", reflections_per_question=1)
    for d in read_dialogues(paths.simulate("m", "finetuned-policy-expert").sessions):
        turns = counselor_turns([d])
        for k, t in enumerate(turns):
            coded = [turn_code(u.code for u in x.codes or []) for x in turns[:k]]
            assert t.meta["requested"] == expert.choose(coded) and t.meta["strategy"] == f"policy:{policy}"
    model_prompts, cr_prompts, policy_prompts = (c.prompts for c in tagging)
    assert all(p[-1]["role"] == "user" for p in model_prompts)
    assert all(p[-1] == {"role": "assistant", "content": "[CR]"} for p in cr_prompts)
    assert policy_prompts and all(p[-1]["content"].startswith("[") for p in policy_prompts)

    # up to date: nothing reruns; a changed strategy or an edited policy reruns that system only
    assert run_stages(cfg, paths) == [(n, True) for n in names]
    policy.write_text("opening: Q\nreflections_per_question: 1\nreflection: SR\n", encoding="utf-8")
    assert [skipped for _, skipped in run_stages(cfg, paths)] == [True, True, True, False]
    changed = strategy_experiment({**generation, "strategy": "SR"}, steered=True)
    assert [skipped for _, skipped in run_stages(changed, paths)] == [True, False, True, True]
    assert all(m["requested"] == "SR" for m in metas("finetuned"))
    # without `steered` the other systems' stages are the same stages (not rerun)
    plain = strategy_experiment({**generation, "strategy": "SR"})
    assert run_stages(plain, paths) == [(n, True) for n in names[:2]]


def test_predict_stages_read_their_policy_file(tmp_path):
    """An edited policy reruns the predictions it steered, as it reruns their simulations."""
    from mi_llm.layout import RunPaths
    from mi_llm.pipeline import model_stages

    policy = tmp_path / "expert.yaml"
    policy.write_text("opening: Q\n", encoding="utf-8")
    cfg = strategy_experiment({"strategy": f"policy:{policy}", "strategies": ["CR"]})
    inputs = {s.name: s.inputs for s in model_stages(cfg, RunPaths(tmp_path / "run"), cfg.models[0])}
    assert policy in inputs["m/predict-finetuned"]
    assert policy not in inputs["m/predict-finetuned-CR"] and policy not in inputs["m/predict-base"]


class TagOnlyCounselor(TaggingCounselor):
    """A briefly trained strategy model: asked for a code, it writes only that tag (and
    stray ones), no words."""

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        self.prompts += [list(m) for m in batch]
        return [Completion(" [CR] [SR]", 3, 3, "stop") for _ in batch]


def test_a_reply_that_is_only_tags_fails_its_session_and_the_run_goes_on(tmp_path, miti_coder):
    """Nothing said is no turn to code or answer: the session is recorded as failed, with why."""
    from mi_llm.layout import SIMULATED_FAILED

    cfg = config(strategy="CR", max_rounds=2)
    simulate(cfg, load_personas(cfg.personas), TagOnlyCounselor(), RecordingClient(), miti_coder, tmp_path / "out")
    failed = [json.loads(line) for line in (tmp_path / "out" / SIMULATED_FAILED).read_text().splitlines()]
    assert len(failed) == cfg.sessions and all(
        f["error"] == "counselor: an empty reply (only a strategy tag)" for f in failed
    )
