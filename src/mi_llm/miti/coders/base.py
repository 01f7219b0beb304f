"""What every coder does: code single utterances, and code whole dialogues.

A coder implements `code_items` (utterances with their context -> codes). Coding a
dialogue is shared: split each counselor turn into utterances (or keep the split it
already has), code them with the client's previous turn as context, then rate the 4
globals (`rate_globals`; by default the regression model of `globals_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.corpus.language import detect_language
from mi_llm.corpus.schema import Dialogue, GlobalRatings, Turn
from mi_llm.miti.coders.labels import WINDOW
from mi_llm.miti.segment import split_utterances

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Item:
    """One utterance to code: its text, the client's previous turn, its language, and the
    conversation before it (`window`: [(role "client"/"counselor", text)], oldest first; the
    counselor's own previous turn among them), when known."""

    text: str
    context: str = ""
    language: str | None = None
    window: tuple[tuple[str, str], ...] = ()

    @property
    def lang(self) -> str:
        return self.language or detect_language(self.text)


@dataclass
class Result:
    """A code (a MITI key or None) and, when the coder failed on it, why."""

    code: str | None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Coder:
    """Base class. Subclasses implement `code_items` and set `name`."""

    name = "coder"

    @property
    def validity(self) -> str | None:
        """One line on how well this coder agrees with experts on unseen data, when measured."""
        return None

    def code_items(self, items: Sequence[Item], progress: Progress | None = None) -> list[Result]:
        raise NotImplementedError

    def code_volleys(self, volleys: Sequence[tuple], progress: Progress | None = None) -> list[list[Result]]:
        """Codes of each volley's utterances; a volley is (client's previous turn, texts,
        language) or (..., the conversation before the volley: [(role, text)], oldest first).
        Each utterance's window is that conversation and the volley's utterances before it."""
        items = []
        for ctx, texts, lang, *rest in volleys:
            spoken = list(rest[0]) if rest else []
            for x in texts:
                items.append(Item(x, ctx, lang, tuple(spoken[-WINDOW:])))
                spoken.append(("counselor", x))
        flat = self.code_items(items, progress) if items else []
        out, k = [], 0
        for _, texts, *_ in volleys:
            out.append(flat[k : k + len(texts)])
            k += len(texts)
        return out

    def code_utterances(
        self, items: Iterable[dict[str, Any] | Item], progress: Progress | None = None
    ) -> list[str | None]:
        """Codes of utterances given as `Item`s or dicts {text, context?, language?}."""
        return [r.code for r in self.code_items(_as_items(items), progress)]

    # ------------------------------------------------------------- dialogues
    def rate_globals(self, dialogue: Dialogue) -> tuple[GlobalRatings | None, str | None]:
        """The 4 global ratings of a coded dialogue, and an error message when none."""
        model = getattr(self, "globals_model", None)
        if model is None:
            return None, "this coder has no global-ratings model"
        return model.predict(dialogue), None

    def rate_globals_many(self, dialogues: Sequence[Dialogue]) -> list[tuple[GlobalRatings | None, str | None]]:
        return [self.rate_globals(d) for d in dialogues]

    def code_dialogues(
        self,
        dialogues: Sequence[Dialogue],
        resegment: bool = False,
        progress: Progress | None = None,
        client_talk: Any = "default",
    ) -> list[Dialogue]:
        """Copies of the dialogues with every counselor turn split, coded, and globals rated,
        and every client turn given its talk type (`Turn.talk`).

        A counselor turn that already has `codes` keeps its utterance split (only the codes
        are replaced) unless `resegment`. `client_talk`: the client-talk coder (`default`, the
        shipped one; a folder; a `ClientTalkCoder`; None leaves client turns as they are).
        """
        volleys: list[tuple[str, list[str], str | None, tuple[tuple[str, str], ...]]] = []
        where: list[tuple[int, int]] = []  # (dialogue, turn) of each volley
        for di, d in enumerate(dialogues):
            prev_client = ""
            spoken: list[tuple[str, str]] = []  # the conversation so far, utterance by utterance
            for ti, t in enumerate(d.turns):
                if t.role == "client":
                    prev_client = t.text
                    spoken.append(("client", t.text))
                    continue
                if t.codes and not resegment:
                    texts = [u.text for u in t.codes]
                else:
                    texts = split_utterances(t.text, d.language)
                where.append((di, ti))
                volleys.append((prev_client, texts, d.language, tuple(spoken[-WINDOW:])))
                spoken += [("counselor", x.strip()) for x in texts if x.strip()]
        results = self.code_volleys(volleys, progress) if volleys else []
        out = [d.model_copy(deep=True) for d in dialogues]
        for (di, ti), (_, texts, *_), res in zip(where, volleys, results):
            old: Turn = out[di].turns[ti]
            meta = {k: v for k, v in old.meta.items() if k != "miti_coder_errors"}
            errors = [r.error for r in res if r.error]
            if errors:
                meta["miti_coder_errors"] = errors
            # validated: the utterances must add up to the turn's text
            out[di].turns[ti] = Turn.model_validate(
                {
                    "role": old.role,
                    "text": old.text,
                    "meta": meta,
                    "codes": [{"text": x, "code": r.code} for x, r in zip(texts, res)] if texts else None,
                }
            )
        rated = self.rate_globals_many(out)
        for d, (ratings, err) in zip(out, rated):
            d.miti_globals = ratings
            n_err = sum(len(t.meta.get("miti_coder_errors", [])) for t in d.turns)
            meta = {k: v for k, v in d.meta.items() if k not in ("miti_coder", "miti_coder_errors")}
            meta["miti_coder"] = self.name  # as the human coding tool writes it
            if n_err or err:
                meta["miti_coder_errors"] = {"utterances": n_err, **({"globals": err} if err else {})}
            d.meta = meta
        if client_talk is not None:
            code_client_turns(out, client_talk)
        return out


def code_client_turns(dialogues: Sequence[Dialogue], client_talk: Any = "default") -> None:
    """Set `Turn.talk` of every client turn in place; the context is the counselor's previous
    turn and the client's turn before it (as in training)."""
    from mi_llm.miti.coders.client_talk import ClientItem, load_client_coder

    # a name or folder is loaded; anything else is a coder already (anything with .code(items))
    coder = load_client_coder(client_talk) if isinstance(client_talk, (str, Path)) else client_talk
    items: list[ClientItem] = []
    where: list[tuple[int, int]] = []
    for di, d in enumerate(dialogues):
        previous = history = last_client = ""
        for ti, t in enumerate(d.turns):
            if t.role == "counselor":
                previous, history = t.text, last_client
                continue
            if t.text.strip():
                items.append(ClientItem(t.text, previous, history, d.language))
                where.append((di, ti))
            last_client = t.text
    for (di, ti), talk in zip(where, coder.code(items) if items else []):
        dialogues[di].turns[ti].talk = talk
    for d in dialogues:
        d.meta["client_talk_coder"] = coder.name


def history_window(history: str | None, context: str | None) -> tuple[tuple[str, str], ...]:
    """The window of an utterance given as {context, history}: the counselor's own previous
    turn, then the client's turn after it; () when neither is given."""
    return tuple((r, t) for r, t in (("counselor", history or ""), ("client", context or "")) if t.strip())


def _as_items(items: Iterable[dict[str, Any] | Item]) -> list[Item]:
    out = []
    for it in items:
        if isinstance(it, Item):
            out.append(it)
        else:
            out.append(
                Item(
                    text=str(it["text"]),
                    context=str(it.get("context") or ""),
                    language=it.get("language"),
                    window=history_window(it.get("history"), it.get("context")),
                )
            )
    return out
