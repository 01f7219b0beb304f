"""`mi-llm chat`, `mi-llm serve` and `mi-llm safety ...`: talk to the counselor behind the safety layer."""

from __future__ import annotations

from pathlib import Path

import typer

from mi_llm.cli.options import INT32_MAX, field_default, field_option, number
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console, setup_logging
from mi_llm.llm.backends.config import LlamaCppConfig
from mi_llm.serve.config import ServeConfig

safety_app = typer.Typer(
    help="The crisis safety layer: classify messages, measure the classifier.", no_args_is_help=True
)

SERVE_PARALLEL = 32  # llama.cpp slots of `mi-llm serve` (docs/serve.md: memory and load)
BACKEND_HELP = "llamacpp (default when llama-cpp-python is installed, else hf) | hf | openai | vllm | echo (no model: repeats the message; for testing)"


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
    app.command("serve")(serve_cmd)
    app.add_typer(safety_app, name="safety")


def _default_db() -> Path:
    from mi_llm.llm.home import mi_llm_home

    return mi_llm_home() / "serve" / "sessions.sqlite3"


DETECTOR_HELP = "combined (rules OR the learned detector; default) | rules | learned"
CRISIS_MODEL_HELP = "a crisis detector folder from `mi-llm safety train` (default: the shipped one)"


def _risk_classifier(detector: str = "combined", crisis_model: Path | None = None):  # -> RiskClassifier
    from mi_llm.errors import MiLlmError
    from mi_llm.serve.safety.learned import LearnedDetector
    from mi_llm.serve.safety.risk import RiskClassifier

    if detector not in ("combined", "rules", "learned"):
        raise MiLlmError("--detector must be combined, rules or learned")
    learned = LearnedDetector.load(crisis_model) if crisis_model is not None else None
    return RiskClassifier(detector=learned, use_rules=detector != "learned", use_detector=detector != "rules")


def _engine_opts(gguf: Path | None, n_ctx: int, threads: int | None) -> dict:
    return {"gguf": str(gguf) if gguf else None, "n_ctx": n_ctx, "n_threads": threads}


def chat_cmd(
    model: str | None = typer.Option(
        None, "--model", help="model name, HF id or folder (default: the embedded gemma-3-270m)"
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter folder (from mi-llm train)"),
    backend: str | None = typer.Option(None, "--backend", help=BACKEND_HELP),
    language: str | None = typer.Option(None, "--language", help="zh | en (default: from your first message)"),
    max_tokens: int = field_option(
        ServeConfig, "default_max_tokens", "--max-tokens", help="longest reply, in tokens", le=INT32_MAX
    ),
    temperature: float = field_option(ServeConfig, "temperature", "--temperature", help="0 = greedy"),
    top_p: float = field_option(ServeConfig, "top_p", "--top-p"),
    seed: int | None = typer.Option(None, "--seed", callback=seed_check),
    session: str | None = typer.Option(
        None, "--session", help="keep the conversation under this id in --db and resume it"
    ),
    db: Path | None = typer.Option(
        None, "--db", help="session database (default: $MI_LLM_HOME/serve/sessions.sqlite3)"
    ),
    safety_resources: Path | None = typer.Option(
        None, "--safety-resources", help="folder with reviewed resources.<lang>.yaml"
    ),
    crisis_model: Path | None = typer.Option(None, "--crisis-model", help=CRISIS_MODEL_HELP),
    gguf: Path | None = typer.Option(None, "--gguf", help="llamacpp: the GGUF to load"),
    n_ctx: int = field_option(LlamaCppConfig, "n_ctx", "--n-ctx", le=INT32_MAX),
    threads: int | None = field_option(LlamaCppConfig, "n_threads", "--threads", le=INT32_MAX),
    strategy: str | None = field_option(ServeConfig, "strategy", "--strategy"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging"),
) -> None:
    """Chat with the counselor in the terminal (streaming; /reset, /save FILE, /quit)."""
    from mi_llm.build.strategy import Strategy
    from mi_llm.errors import MiLlmError
    from mi_llm.llm.backends.base import GenerationConfig
    from mi_llm.serve.chat import ChatSession, run_chat
    from mi_llm.serve.engine import StrategyEngine, build_engine
    from mi_llm.serve.safety.layer import SafetyLayer
    from mi_llm.serve.sessions import SessionStore, check_session_id

    setup_logging(verbose)
    if language not in (None, "zh", "en"):
        raise MiLlmError("--language must be zh or en")
    if session is not None:
        check_session_id(session)
    steer = Strategy.parse(strategy) if strategy is not None else None  # a bad policy file fails first
    safety = SafetyLayer(_risk_classifier(crisis_model=crisis_model), resources_dir=safety_resources)
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=top_p,
        top_k=field_default(ServeConfig, "top_k"),
        repetition_penalty=field_default(ServeConfig, "repetition_penalty"),
        seed=seed,
    )
    with console.status("loading the model"):
        engine = build_engine(backend, model, str(adapter) if adapter else None, **_engine_opts(gguf, n_ctx, threads))
    if steer is not None:
        engine = StrategyEngine(engine, steer)
    store = SessionStore(db or _default_db()) if session else None
    try:
        chat = ChatSession(engine, safety, config, language=language, store=store, session_id=session)
        run_chat(chat, banner=f"mi-llm chat: {engine.model_id} ({engine.name})")
    finally:
        engine.close()
        if store is not None:
            store.close()


def serve_cmd(
    model: str | None = typer.Option(
        None, "--model", help="model name, HF id or folder (default: the embedded gemma-3-270m)"
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter folder (from mi-llm train)"),
    backend: str | None = typer.Option(None, "--backend", help=BACKEND_HELP),
    host: str = field_option(ServeConfig, "host", "--host"),
    port: int = typer.Option(8000, "--port", callback=number(ge=1, le=65535)),
    api_key_file: Path | None = typer.Option(
        None,
        "--api-key-file",
        help="keys file, one 'OWNER: KEY' (or bare KEY) a line, mode 600; each owner sees only their sessions (also: $MI_LLM_API_KEY)",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="also answer to this Host name (NAME or NAME:PORT; repeatable), e.g. behind a reverse proxy",
    ),
    access_log: bool = typer.Option(
        True, "--access-log/--no-access-log", help="uvicorn's access log (session ids shown as hashes)"
    ),
    api_key: str | None = typer.Option(None, "--api-key", hidden=True, help="removed: visible to every user in ps"),
    db: Path | None = typer.Option(
        None, "--db", help="session database (default: $MI_LLM_HOME/serve/sessions.sqlite3)"
    ),
    language: str | None = typer.Option(None, "--language", help="zh | en for every request (default: per message)"),
    max_tokens_limit: int = field_option(ServeConfig, "max_tokens_limit", "--max-tokens-limit", le=INT32_MAX),
    default_max_tokens: int | None = typer.Option(
        None,
        "--default-max-tokens",
        callback=number(ge=1, le=INT32_MAX),
        help=f"max_tokens when a request gives none (default: {field_default(ServeConfig, 'default_max_tokens')}, "
        "at most --max-tokens-limit)",
    ),
    max_request_bytes: int = field_option(ServeConfig, "max_request_bytes", "--max-request-bytes"),
    rate_limit: float = field_option(ServeConfig, "rate_per_minute", "--rate-limit"),
    # the rate limiter keeps the bucket as a float: a burst past 2**1024 would overflow it
    rate_burst: int = field_option(ServeConfig, "rate_burst", "--rate-burst", le=INT32_MAX),
    max_queue: int = field_option(ServeConfig, "max_queue", "--max-queue"),
    temperature: float = field_option(ServeConfig, "temperature", "--temperature"),
    safety_resources: Path | None = typer.Option(
        None, "--safety-resources", help="folder with reviewed resources.<lang>.yaml"
    ),
    crisis_model: Path | None = typer.Option(None, "--crisis-model", help=CRISIS_MODEL_HELP),
    log_text: bool = field_option(ServeConfig, "log_text", "--log-text"),
    gguf: Path | None = typer.Option(None, "--gguf", help="llamacpp: the GGUF to load"),
    n_ctx: int = field_option(LlamaCppConfig, "n_ctx", "--n-ctx", le=INT32_MAX),
    threads: int | None = field_option(LlamaCppConfig, "n_threads", "--threads", le=INT32_MAX),
    strategy: str | None = field_option(ServeConfig, "strategy", "--strategy"),
    parallel: int = typer.Option(
        SERVE_PARALLEL,
        "--parallel",
        callback=number(ge=1, le=1024),
        help="llamacpp: conversations decoded together (continuous batching; each holds --n-ctx of KV cache)",
    ),
    upstream: str | None = typer.Option(
        None,
        "--upstream",
        help="run the model on this OpenAI-compatible server (vLLM, SGLang, llama.cpp server), e.g. http://gpu:8000/v1",
    ),
    upstream_model: str | None = typer.Option(
        None, "--upstream-model", help="the model's name on --upstream (default: the one it lists)"
    ),
    upstream_key_env: str | None = typer.Option(
        None, "--upstream-key-env", help="environment variable holding --upstream's API key"
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging"),
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/models) and a web chat page at /."""
    from mi_llm.build.strategy import Strategy
    from mi_llm.errors import MiLlmError
    from mi_llm.serve.api import create_app, run_server
    from mi_llm.serve.auth import ENV_KEY, check_bind, keys_from_env, read_keys_file
    from mi_llm.serve.engine import ChatEngine, StrategyEngine, build_engine, upstream_engine, upstream_url
    from mi_llm.serve.hostguard import HostPolicy
    from mi_llm.serve.safety.layer import SafetyLayer
    from mi_llm.serve.sessions import SessionStore

    setup_logging(verbose)
    if api_key is not None:
        raise MiLlmError(
            f"--api-key is no longer accepted: a key on the command line is visible to every user of "
            f"this machine (ps). Set {ENV_KEY} or pass --api-key-file FILE"
        )
    keys = {**keys_from_env(), **(read_keys_file(api_key_file) if api_key_file is not None else {})}
    check_bind(host, bool(keys))  # before loading anything
    HostPolicy(host, allowed_host)  # checks --allowed-host
    if language not in (None, "zh", "en"):
        raise MiLlmError("--language must be zh or en")
    if default_max_tokens is None:
        default_max_tokens = min(field_default(ServeConfig, "default_max_tokens"), max_tokens_limit)
    if not 1 <= default_max_tokens <= max_tokens_limit:
        raise MiLlmError("--default-max-tokens must be between 1 and --max-tokens-limit")
    steer = Strategy.parse(strategy) if strategy is not None else None
    upstream_key = _upstream_key(upstream, upstream_model, upstream_key_env, backend, model, adapter, gguf)
    if upstream is not None:
        upstream_url(upstream)  # checked before anything is loaded
    safety = SafetyLayer(_risk_classifier(crisis_model=crisis_model), resources_dir=safety_resources)
    safety.warn_unreviewed()
    store = SessionStore(db or _default_db())
    engine: ChatEngine
    with console.status("connecting to the model server" if upstream else "loading the model"):
        if upstream is not None:
            engine = upstream_engine(upstream, upstream_model, upstream_key, concurrency=max_queue)
        else:
            opts = {**_engine_opts(gguf, n_ctx, threads), "parallel": parallel}
            engine = build_engine(backend, model, str(adapter) if adapter else None, **opts)
    if steer is not None:
        engine = StrategyEngine(engine, steer)
    settings = ServeConfig(
        api_keys=keys,
        host=host,
        allowed_hosts=list(allowed_host),
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens,
        max_request_bytes=max_request_bytes,
        rate_per_minute=rate_limit,
        rate_burst=rate_burst,
        max_queue=max_queue,
        language=language,
        log_text=log_text,
        temperature=temperature,
        strategy=strategy,
    )
    app = create_app(engine, settings, store, safety)
    shown = "[::1]" if host == "::1" else host
    owners = len(set(keys.values()))
    auth = f"auth on: {len(keys)} key(s), {owners} owner(s)" if keys else "auth off"
    console.print(
        f"serving {engine.model_id} ({engine.name}) on http://{shown}:{port}/ ({auth}, sessions in {store.path})",
        soft_wrap=True,
    )
    try:
        run_server(app, host, port, access_log=access_log)
    finally:
        engine.close()
        store.close()


def _upstream_key(
    upstream: str | None,
    upstream_model: str | None,
    key_env: str | None,
    backend: str | None,
    model: str | None,
    adapter: Path | None,
    gguf: Path | None,
) -> str | None:
    """--upstream's API key (from the environment variable named), after checking the options go together."""
    import os

    from mi_llm.errors import MiLlmError

    if upstream is None:
        used = [name for name, v in (("--upstream-model", upstream_model), ("--upstream-key-env", key_env)) if v]
        if used:
            raise MiLlmError(f"{used[0]} needs --upstream URL")
        return None
    local = [
        name
        for name, v in (("--backend", backend), ("--model", model), ("--adapter", adapter), ("--gguf", gguf))
        if v is not None
    ]
    if local:
        raise MiLlmError(
            f"{local[0]} does not go with --upstream (the model runs there; name it with --upstream-model)"
        )
    if key_env is None:
        return None
    key = os.environ.get(key_env)
    if not key:
        raise MiLlmError(f"--upstream-key-env {key_env}: that environment variable is not set")
    return key


@safety_app.command("check")
def safety_check_cmd(
    input: Path = typer.Argument(..., help="JSONL lines {id, text, language?}"),
    output: Path = typer.Option(..., "-o", "--output", help="JSONL lines {id, crisis, category, matched, ...}"),
    language: str | None = typer.Option(None, "--language", help="zh | en for lines without one (default: detected)"),
    detector: str = typer.Option("combined", "--detector", help=DETECTOR_HELP),
    crisis_model: Path | None = typer.Option(None, "--crisis-model", help=CRISIS_MODEL_HELP),
) -> None:
    """Classify messages for crisis content: {id, crisis, level, category, score, ...} a line
    (the text is never printed or logged)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mi_llm.serve.safety.check import check_file

    classifier = _risk_classifier(detector, crisis_model)
    progress = Progress(
        TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = progress.add_task("classify", total=None)

    def on_start(total: int) -> None:  # the bar shows once the input is checked: an error stays one line
        progress.update(task, total=total)
        progress.start()

    try:
        summary = check_file(
            input, output, language, classifier=classifier, on_start=on_start, on_line=lambda: progress.advance(task)
        )
    finally:
        progress.stop()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    console.print(f"{summary.lines} lines -> {output}: {summary.crisis} crisis ({counts})")


@safety_app.command("eval")
def safety_eval_cmd(
    data: Path | None = typer.Option(None, "--data", help="your own labelled JSONL {id, text, language, category}"),
    split: str = typer.Option(
        "test", "--split", help="bundled set: dev | test | test2 | test3 | train | heldout | all"
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the metrics as JSON"),
    detector: str = typer.Option("combined", "--detector", help=DETECTOR_HELP),
    crisis_model: Path | None = typer.Option(None, "--crisis-model", help=CRISIS_MODEL_HELP),
) -> None:
    """Precision and recall of the crisis classifier per language (bundled labelled sets by default)."""
    from rich.table import Table

    from mi_llm.errors import MiLlmError
    from mi_llm.io import write_json
    from mi_llm.serve.safety.evaluate import DETECTOR_SPLITS, SPLITS, bundled_set, evaluate, read_labelled

    if data is not None:
        rows, label = read_labelled(data), str(data)
    else:
        known = (*SPLITS, *DETECTOR_SPLITS)
        splits = SPLITS if split == "all" else (split,)
        if any(s not in known for s in splits):
            raise MiLlmError(f"--split must be one of {', '.join(known)} or all (the rules' sets)")
        rows = [r for s in splits for lang in ("zh", "en") for r in read_labelled(bundled_set(s, lang))]
        label = f"bundled {split} split"
    metrics = evaluate(rows, _risk_classifier(detector, crisis_model))
    table = Table(title=f"crisis detection ({detector}) on {label}")
    for col in (
        "language",
        "n",
        "crisis",
        "precision",
        "recall",
        "F1",
        "FPR",
        "category acc.",
        "level acc.",
        "FP",
        "FN",
    ):
        table.add_column(col, justify="right")
    for name, m in [*metrics["languages"].items(), ("all", metrics["all"])]:
        table.add_row(
            name,
            str(m["n"]),
            str(m["crisis"]),
            _fmt(m["precision"]),
            _fmt(m["recall"]),
            _fmt(m["f1"]),
            _fmt(m["false_positive_rate"]),
            _fmt(m["category_accuracy"]),
            _fmt(m["level_accuracy"]),
            str(m["fp"]),
            str(m["fn"]),
        )
    console.print(table)
    if metrics["errors"]:
        console.print(
            "errors (ids): " + ", ".join(f"{e['id']} ({e['gold']}->{e['predicted']})" for e in metrics["errors"])
        )
    if output is not None:
        write_json(output, metrics)


@safety_app.command("train")
def safety_train_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="folder for the detector (detector.json, detector.npz)"),
    data: list[Path] = typer.Option(
        [], "--data", help="your own labelled JSONL {id, text, language, category, subcategory?} (repeatable)"
    ),
    shared_data: Path | None = typer.Option(
        None, "--shared-data", help="also the public crisis sets (PsySUICIDE, SAD, C-SSRS) in this folder's crisis/"
    ),
    bundled: bool = typer.Option(True, "--bundled/--no-bundled", help="also the project's written training sets"),
    recall_target: float = typer.Option(
        0.95, "--recall-target", callback=number(gt=0, le=1), help="recall the threshold keeps on the validation split"
    ),
    seed: int = typer.Option(0, "--seed", callback=seed_check),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging"),
) -> None:
    """Train the learned crisis detector on labelled data; use it with --crisis-model DIR."""
    from mi_llm.serve.safety.train import TrainConfig, fit, training_rows

    setup_logging(verbose)
    rows = training_rows(data, shared_data, bundled)
    cfg = TrainConfig(recall_target=recall_target, seed=seed)
    with console.status("training the crisis detector"):
        det = fit(rows, cfg, progress=lambda msg: console.log(msg))
    det.save(output)
    v = det.info["validation"]
    console.print(
        f"{det.info['crisis_rows']} crisis of {sum(det.info['rows'].values())} rows -> {output}: "
        f"threshold {det.threshold:.3f} (validation recall {v['recall']}, precision {v['precision']}), "
        f"high {det.high_threshold:.3f}"
    )


@safety_app.command("flagged")
def safety_flagged_cmd(
    db: Path | None = typer.Option(
        None, "--db", help="session database (default: $MI_LLM_HOME/serve/sessions.sqlite3)"
    ),
) -> None:
    """Sessions the safety layer flagged, for human follow-up (ids, categories, levels, times; no text)."""
    import datetime as dt
    from collections import Counter

    from rich.table import Table

    from mi_llm.errors import MiLlmError
    from mi_llm.serve.sessions import SessionStore

    path = db or _default_db()
    if not path.is_file():
        raise MiLlmError(f"{path}: no session database")
    store = SessionStore(path)
    try:
        table = Table(title=f"flagged sessions in {path}")
        for col in ("session", "first category", "flags", "levels", "first flagged (UTC)", "rules / detector"):
            table.add_column(col)
        rows = store.flagged_sessions()
        for s in rows:
            when = dt.datetime.fromtimestamp(s.flagged_at or 0, dt.UTC).strftime("%Y-%m-%d %H:%M")
            events = store.events(s.id)
            rules = sorted({e["rule"] or "" for e in events})
            levels = Counter(e["level"] for e in events)
            shown = ", ".join(f"{lv} {levels[lv]}" for lv in ("high", "low") if levels[lv])
            table.add_row(s.id, s.flag_category or "", str(s.flag_count), shown, when, ", ".join(rules))
        console.print(table if rows else "no flagged sessions")
    finally:
        store.close()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
