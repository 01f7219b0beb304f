"""Labelled utterances from each source, mapped onto the MITI 4.2.1 keys.

The mappings are fixed so that figures stay comparable across sources (issue 6); what each
one loses is written down in docs/miti-coder.md.

- AnnoMI (expert, per therapist turn): question -> Q; reflection simple -> SR, complex -> CR;
  therapist_input information -> GI, advice -> Persuade, options -> PwP, negotiation -> Seek;
  other -> null. Several annotators: the majority label, ties dropped.
- Welivita CC_Augmented (automatic, per sentence; column `Union (without disambiguities)`):
  Closed/Open Question -> Q; Simple Reflection -> SR; Complex Reflection -> CR; Give
  Information -> GI; Advise with Permission -> PwP; Advise without Permission, Direct, Warn
  -> Persuade; Affirm -> AF; Emphasize Autonomy -> EA; Confront -> Confront; Support,
  Self-Disclose, Other -> null.
- MIBot (GPT-4o-assigned MISC, per utterance): Q -> Q; MIIN -> Persuade; Other -> null;
  R (simple/complex not given) and MICO (a mix of affirm, support, autonomy, permission)
  cannot be mapped to one key and are dropped.
- Coded dialogues (the bundled demo corpus, or any Dialogue JSONL with `Turn.codes`): as coded.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.miti.codebook import CODES

log = logging.getLogger(__name__)

NULL = "null"  # the label used for "not coded" inside classifiers (None in data)

WINDOW = 10  # utterances of conversation kept before each labelled one (`Example.window`)

SOURCES = ("annomi", "welivita", "mibot", "dialogues")

# What a coder trained on each source may be shipped under (recorded in its coder.json).
LICENCES = {
    "annomi": "stated public domain (earlier upstream README; none stated now)",
    "demo": "mi-llm's own (the bundled demo corpus)",
    "welivita": "CC BY-NC-SA 3.0 (non-commercial, share-alike: not in the shipped coder)",
    "mibot": "CC BY-SA 4.0 (share-alike: not in the shipped coder)",
}

# ---------------------------------------------------------------- the mappings

ANNOMI_THERAPIST_INPUT = {"information": "GI", "advice": "Persuade", "options": "PwP", "negotiation": "Seek"}
ANNOMI_REFLECTION = {"simple": "SR", "complex": "CR"}

WELIVITA = {
    "Closed Question": "Q",
    "Open Question": "Q",
    "Simple Reflection": "SR",
    "Complex Reflection": "CR",
    "Give Information": "GI",
    "Advise with Permission": "PwP",
    "Advise without Permission": "Persuade",
    "Direct": "Persuade",
    "Warn": "Persuade",
    "Affirm": "AF",
    "Emphasize Autonomy": "EA",
    "Confront": "Confront",
    "Support": None,
    "Self-Disclose": None,
    "Other": None,
}

# MISC labels of MIBot; a missing key means "cannot be mapped: drop the utterance".
MIBOT = {"Q": "Q", "MIIN": "Persuade", "Other": None}
MIBOT_DROPPED = ("R", "MICO")

_UNMAPPABLE = object()  # sentinel: this annotation says nothing usable


def annomi_code(main: str, reflection_subtype: str | None, input_subtype: str | None) -> object:
    """One AnnoMI annotation -> a MITI key, None (not coded) or _UNMAPPABLE."""
    main = (main or "").strip()
    if main == "question":
        return "Q"
    if main == "reflection":
        return ANNOMI_REFLECTION.get((reflection_subtype or "").strip(), _UNMAPPABLE)
    if main == "therapist_input":
        return ANNOMI_THERAPIST_INPUT.get((input_subtype or "").strip(), _UNMAPPABLE)
    if main == "other":
        return None
    return _UNMAPPABLE


def majority(votes: list[object]) -> object:
    """The label most annotators gave; a tie at the top, or no usable vote, is _UNMAPPABLE."""
    usable = [v for v in votes if v is not _UNMAPPABLE]
    if not usable:
        return _UNMAPPABLE
    counts = Counter(usable).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return _UNMAPPABLE
    return counts[0][0]


def welivita_code(label: str) -> object:
    return WELIVITA.get(label.strip(), _UNMAPPABLE)


def mibot_code(label: str) -> object:
    return MIBOT.get((label or "").strip(), _UNMAPPABLE)


# ---------------------------------------------------------------- the examples


@dataclass
class Example:
    """One labelled utterance. `code` is a MITI key or None (not coded)."""

    text: str
    code: str | None
    language: str
    source: str
    group: str  # transcript / dialogue id: cross-validation never splits a group
    context: str = ""  # the client's previous turn, when known
    uid: str = ""
    # the utterances before it, oldest first, up to WINDOW: (role "client"/"counselor", text);
    # the counselor's own previous turn is among them. Empty when unknown (context stands alone).
    window: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def _need(path: Path, what: str) -> None:
    if not path.exists():
        raise MiLlmError(f"{path}: no such {what}")


def iter_annomi_rows(path: Path, label_column: str) -> Iterator[tuple[int, tuple[str, int], dict[str, str]]]:
    """(line, (transcript_id, utterance_id), row) of an AnnoMI CSV (full or simple), checked:
    the columns an importer needs (with `label_column`) and a numeric utterance id."""
    _need(path, "file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"transcript_id", "utterance_id", "interlocutor", "utterance_text", label_column}
        if not need <= set(reader.fieldnames or ()):
            raise InputError(path, f"not an AnnoMI CSV: needs columns {sorted(need)}", 1)
        for lineno, row in enumerate(reader, start=2):
            try:
                key = (row["transcript_id"], int(row["utterance_id"]))
            except ValueError:
                raise InputError(path, f"bad utterance_id {row['utterance_id']!r}", lineno) from None
            yield lineno, key, row


def load_annomi(path: str | Path) -> list[Example]:
    """AnnoMI-full.csv (or -simple.csv) therapist turns with their majority MITI key."""
    path = Path(path)
    votes: dict[tuple[str, int], list[object]] = defaultdict(list)
    text: dict[tuple[str, int], str] = {}
    client: dict[tuple[str, int], str] = {}
    spoken: dict[tuple[str, int], tuple[str, str]] = {}  # every utterance: (role, text), for the windows
    for _lineno, key, row in iter_annomi_rows(path, "main_therapist_behaviour"):
        if row["interlocutor"] in ("client", "therapist"):
            role = "client" if row["interlocutor"] == "client" else "counselor"
            spoken.setdefault(key, (role, row["utterance_text"] or ""))
        if row["interlocutor"] == "client":
            client.setdefault(key, row["utterance_text"] or "")
            continue
        if row["interlocutor"] != "therapist":
            continue
        text.setdefault(key, row["utterance_text"] or "")
        votes[key].append(
            annomi_code(
                row["main_therapist_behaviour"], row.get("reflection_subtype"), row.get("therapist_input_subtype")
            )
        )
    out: list[Example] = []
    dropped = 0
    for key in sorted(votes, key=lambda k: (int(k[0]) if k[0].isdigit() else k[0], k[1])):
        code = majority(votes[key])
        if code is _UNMAPPABLE or not text[key].strip():
            dropped += 1
            continue
        tid, uid = key
        out.append(
            Example(
                text=text[key],
                code=cast("str | None", code),
                language="en",
                source="annomi",
                group=f"annomi-{tid}",
                context=client.get((tid, uid - 1), ""),
                uid=f"annomi-{tid}-{uid}",
                window=tuple(spoken[(tid, u)] for u in range(max(0, uid - WINDOW), uid) if (tid, u) in spoken),
            )
        )
    log.info("AnnoMI: %d therapist utterances, %d dropped (tie or no mappable label)", len(out), dropped)
    return out


def load_welivita(path: str | Path) -> list[Example]:
    """CC_Augmented.csv listener sentences with an automatic label; context = the asker's post."""
    path = Path(path)
    _need(path, "file")
    column = "Union (without disambiguities)"
    posts: dict[str, str] = {}
    rows: list[tuple[int, dict]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"dialog_id", "author", "text", column}
        if not need <= set(reader.fieldnames or ()):
            raise InputError(path, f"not a Welivita CC_Augmented CSV: needs columns {sorted(need)}", 1)
        for lineno, row in enumerate(reader, start=2):
            if row["author"] == "speaker":
                posts.setdefault(row["dialog_id"], row["text"] or "")
            elif row["author"] == "listener" and (row.get(column) or "").strip():
                rows.append((lineno, row))
    out: list[Example] = []
    dropped = 0
    for lineno, row in rows:
        code = welivita_code(row[column])
        if code is _UNMAPPABLE or not (row["text"] or "").strip():
            dropped += 1
            continue
        did = row["dialog_id"].replace(" ", "")
        out.append(
            Example(
                text=row["text"].strip(),
                code=cast("str | None", code),
                language="en",
                source="welivita",
                group=f"welivita-{did}",
                context=posts.get(row["dialog_id"], ""),
                uid=f"welivita-{lineno}",
            )
        )
    log.info("Welivita: %d labelled listener sentences, %d dropped", len(out), dropped)
    return out


def load_mibot(path: str | Path) -> list[Example]:
    """MIBot transcripts (a folder of <id>.json, or its parent holding transcripts/)."""
    path = Path(path)
    _need(path, "folder")
    folder = path / "transcripts" if (path / "transcripts").is_dir() else path
    files = sorted(folder.glob("*.json"))
    if not files:
        raise MiLlmError(f"{path}: no MIBot transcripts (*.json) found")
    out: list[Example] = []
    dropped: Counter[str] = Counter()
    for f in files:
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
            utterances = obj["utterances"]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f, f"not a MIBot transcript ({e})") from None
        last_client: list[str] = []  # the client's latest volley
        volley = None
        for i, u in enumerate(utterances):
            speaker = u.get("speaker")
            if speaker == "client":
                if u.get("volley_number") != volley:
                    last_client, volley = [], u.get("volley_number")
                last_client.append(u.get("text") or "")
                continue
            if speaker != "counsellor":
                continue
            label = u.get("auto_misc_label") or ""
            code = mibot_code(label)
            if code is _UNMAPPABLE or not (u.get("text") or "").strip():
                dropped[label] += 1
                continue
            out.append(
                Example(
                    text=u["text"].strip(),
                    code=cast("str | None", code),
                    language="en",
                    source="mibot",
                    group=f"mibot-{f.stem[:16]}",
                    context=" ".join(last_client),
                    uid=f"mibot-{f.stem[:16]}-{u.get('utterance_number', i)}",
                )
            )
    log.info("MIBot: %d counsellor utterances kept, dropped by label: %s", len(out), dict(dropped))
    return out


def examples_from_dialogues(dialogues: Iterable[Dialogue], source: str = "demo") -> list[Example]:
    """Coded counselor utterances of dialogues; context = the client turn before the volley."""
    out: list[Example] = []
    for d in dialogues:
        prev_client = ""
        spoken: list[tuple[str, str]] = []  # the utterances so far (a coded turn: each of its utterances)
        for ti, t in enumerate(d.turns):
            if t.role == "client":
                prev_client = t.text
                spoken.append(("client", t.text))
                continue
            if not t.codes:
                spoken.append((t.role, t.text))
            for ui, u in enumerate(t.codes or []):
                if not u.text.strip():
                    continue
                window = tuple(spoken[-WINDOW:])
                spoken.append(("counselor", u.text.strip()))
                out.append(
                    Example(
                        text=u.text.strip(),
                        code=u.code,
                        language=d.language,
                        source=source,
                        group=f"{source}-{d.id}",
                        context=prev_client,
                        uid=f"{d.id}-{ti}-{ui}",
                        window=window,
                    )
                )
    return out


def load_dialogues_file(path: str | Path) -> list[Example]:
    path = Path(path)
    return examples_from_dialogues(read_dialogues(path), source=path.stem)


def demo_examples(language: str | None = None) -> list[Example]:
    """The bundled demo corpus codes (MI and raw dialogues, zh and en)."""
    from mi_llm.resources import demo_dialogues

    return examples_from_dialogues(demo_dialogues(language), source="demo")


LOADERS = {"annomi": load_annomi, "welivita": load_welivita, "mibot": load_mibot, "dialogues": load_dialogues_file}


def parse_sources(specs: Iterable[str]) -> list[tuple[str, Path]]:
    """`--data KIND=PATH` values -> [(kind, path)], checked."""
    out = []
    for spec in specs:
        kind, sep, p = spec.partition("=")
        kind = kind.strip().lower()
        if not sep or not p.strip():
            raise MiLlmError(f"--data {spec!r}: expected KIND=PATH with KIND one of {', '.join(SOURCES)}")
        if kind not in LOADERS:
            raise MiLlmError(f"--data {spec!r}: unknown source {kind!r}; choose one of {', '.join(SOURCES)}")
        path = Path(p.strip()).expanduser()
        if not path.exists():
            raise MiLlmError(f"{path}: no such {'folder' if kind == 'mibot' else 'file'} (--data {spec})")
        out.append((kind, path))
    return out


def parse_weights(specs: Iterable[str]) -> dict[str, float]:
    """`--weight SOURCE=W` values -> {source: weight}, checked (W a number >= 0)."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, w = spec.partition("=")
        name = name.strip()
        try:
            weight = float(w) if sep and name else -1.0
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise MiLlmError(
                f"--weight {spec!r}: expected SOURCE=W with W a number >= 0 "
                f"(sources: {', '.join(s for s in SOURCES if s != 'dialogues')}, demo, or a dialogues file's name)"
            )
        out[name] = weight
    return out


def read_excluded_dialogues(path: str | Path) -> set[str]:
    """The dialogue ids of a dialogues JSONL (`id`) or a round-samples JSONL (`dialogue_id`):
    the dialogues a coder must not learn from (e.g. an experiment's test split)."""
    from mi_llm.errors import InputError
    from mi_llm.io import iter_jsonl

    ids: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        did = obj.get("dialogue_id", obj.get("id"))
        if not isinstance(did, str) or not did:
            raise InputError(Path(path), "no `dialogue_id` (samples) or `id` (dialogues) string", lineno)
        ids.add(did)
    return ids


def exclude_dialogues(examples: Sequence[Example], dialogue_ids: set[str]) -> list[Example]:
    """`examples` without the utterances of those dialogues (a dialogue's group is
    `<source>-<dialogue id>`)."""
    return [e for e in examples if e.group.removeprefix(f"{e.source}-") not in dialogue_ids]


def load_sources(sources: Iterable[tuple[str, str | Path]], demo: bool = True) -> list[Example]:
    """Examples of every (kind, path) source, plus the bundled demo corpus codes."""
    out: list[Example] = demo_examples() if demo else []
    for kind, p in sources:
        if kind not in LOADERS:
            raise MiLlmError(f"unknown source {kind!r}; choose one of {', '.join(SOURCES)}")
        out += LOADERS[kind](p)
    bad = {e.code for e in out if e.code is not None and e.code not in CODES}
    if bad:  # a mapping bug, not user input
        raise AssertionError(f"unknown codes after mapping: {bad}")
    return out


def shared_data_dir() -> Path | None:
    """../shared/data beside the repository (or $MI_LLM_SHARED_DATA), when present."""
    import os

    env = os.environ.get("MI_LLM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[4] / ".." / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def shared_sources(data_dir: Path | None = None, exclude: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """The default (kind, path) sources found in the shared data folder."""
    root = data_dir or shared_data_dir()
    if root is None:
        return []
    found = {
        "annomi": root / "annomi" / "AnnoMI-full.csv",
        "welivita": root / "welivita" / "CC_Augmented.csv",
        "mibot": root / "mibot" / "transcripts",
    }
    return [(k, p) for k, p in found.items() if p.exists() and k not in set(exclude)]
