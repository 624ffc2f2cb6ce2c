"""Training records -> chat records whose assistant answer starts with its control token.

This is the core of ``rt-tag`` (the click command in ``rtools.commands.tag`` only parses
options). One input record in, one output record out, streamed:

* the conversation comes from ``messages`` (a list of ``{role, content}`` ending with a user
  turn) or, when there is no ``messages`` field, from ``prompt`` (one user turn);
* the answer comes from ``response`` (or another field, ``response_field``); a refusal row
  without one gets a short built-in or configured refusal text, a respond row without one is
  an error;
* the control token is chosen by the token map from ``label`` and ``category``:
  ``<token><separator><answer>`` becomes the assistant turn appended to ``messages``.

The separator is empty by default: the control token is a special token of the tokenizer, so
nothing needs to separate it from the answer, and the answer's first word tokenizes exactly
as it would without the token. Every other field is kept, in its original key order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import BadValue, ConfigError, parse_pair
from .records import RecordError, conversation, json_type, numbered
from .tokens import CATEGORY, DEFAULT_CATEGORIES, LABELS, SINGLE, TokenMap, slugify

#: What separates the control token from the answer, by name.
SEPARATORS: dict[str, str] = {"none": "", "space": " ", "newline": "\n"}

#: The refusal text a refusal row without a response gets, per CoCoNot category slug.
DEFAULT_REFUSAL_TEXTS: dict[str, str] = {
    "safety": "I can't help with that request because it could cause harm.",
    "humanizing": (
        "I'm an AI assistant: I don't have personal experiences, feelings or a body, "
        "so I can't answer that as if I did."
    ),
    "incomplete": (
        "I can't answer that as asked because the request is missing information I need. "
        "Could you give more details?"
    ),
    "indeterminate": (
        "I can't give a definitive answer to that: it depends on opinions or circumstances, "
        "and there is no single right answer."
    ),
    "unsupported": "I can't do that: it is beyond what I can do as a text-based AI assistant.",
}
#: The refusal text for a row whose category has no text of its own.
GENERIC_REFUSAL_TEXT = "I can't help with that request."

NO_CATEGORY = "(none)"


@dataclass(frozen=True)
class TagOptions:
    """How to turn records into chat records (everything ``rt-tag``'s flags control); frozen.

    :meth:`from_flags` builds and checks it from rt-tag's option values.
    """

    token_map: TokenMap = field(default_factory=TokenMap.single)
    separator: str = ""
    response_field: str = "response"
    #: label for rows that have none (None: such a row is an error)
    default_label: str | None = None
    #: refusal text for rows whose category has no text of its own (None: the built-ins)
    refusal_text: str | None = None
    #: refusal text per category slug (overrides ``refusal_text`` and the built-ins)
    refusal_texts: dict[str, str] = field(default_factory=dict)
    #: user category name -> slug, applied before CoCoNot's names and lowercasing
    category_map: dict[str, str] = field(default_factory=dict)
    #: also write the control token into this field (None: do not)
    control_field: str | None = None

    @classmethod
    def from_flags(
        cls,
        mode: str = SINGLE,
        refuse_token: str | None = None,
        respond_token: str = "[respond]",
        categories: str | None = None,
        cat_tokens: Iterable[str] | None = None,
        maps: Iterable[str] = (),
        label: str | None = None,
        response_field: str = "response",
        refusal_texts: Iterable[str] = (),
        separator: str = "none",
        control_field: str | None = None,
    ) -> TagOptions:
        """rt-tag's option values -> TagOptions; a BadValue (naming the setting) for a bad value, a
        ConfigError for a bad combination. ``refuse_token``, ``categories`` and ``cat_tokens`` are None when not given:
        each belongs to one mode only."""
        category_map: dict[str, str] = {}
        for text in maps:
            name, slug = _pair(text, "NAME=SLUG", "maps", last=True)
            category_map[name] = slug.strip()
        if mode == SINGLE:
            for opt, value in (("--categories", categories), ("--cat-token", cat_tokens)):
                if value is not None:
                    raise ConfigError(f"{opt} applies only to --mode category")
            try:
                token_map = TokenMap.single(refuse=refuse_token or "[refuse]", respond=respond_token)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif mode == CATEGORY:
            if refuse_token is not None:
                raise ConfigError("--refuse-token applies only to --mode single (use --cat-token SLUG=TOKEN)")
            slugs: list[str] = []
            for name in categories.split(",") if categories is not None else DEFAULT_CATEGORIES:
                slug = slugify(name, category_map)
                if slug and slug not in slugs:
                    slugs.append(slug)
            if not slugs:
                raise BadValue("no categories given", "categories")
            tokens: dict[str, str] = {}
            for text in cat_tokens or ():
                key, tok = _pair(text, "SLUG=TOKEN", "cat_tokens")
                tokens[_known_slug(key, slugs, category_map, "cat_tokens")] = tok.strip()
            try:
                token_map = TokenMap.category(slugs, respond=respond_token, tokens=tokens)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        else:
            raise BadValue(f"unknown mode {mode!r} (expected {SINGLE!r} or {CATEGORY!r})", "mode")
        global_text: str | None = None
        per_category: dict[str, str] = {}
        for value in refusal_texts:
            key, text = parse_pair(value, "[SLUG=]TEXT", optional=True)
            if key is None:
                if not value.strip():
                    raise BadValue("empty refusal text", "refusal_texts")
                global_text = value
                continue
            known = token_map.categories if token_map.mode == CATEGORY else None
            slug = _known_slug(key, known, category_map, "refusal_texts")
            if not text.strip():
                raise BadValue(f"empty refusal text for {key!r}", "refusal_texts")
            per_category[slug] = text
        if separator not in SEPARATORS:
            raise BadValue(f"unknown separator {separator!r} (one of {', '.join(SEPARATORS)})", "separator")
        return cls(
            token_map=token_map,
            separator=SEPARATORS[separator],
            response_field=response_field,
            default_label=label,
            refusal_text=global_text,
            refusal_texts=per_category,
            category_map=category_map,
            control_field=control_field,
        )

    def refusal_for(self, slug: str | None) -> str:
        if slug is not None and slug in self.refusal_texts:
            return self.refusal_texts[slug]
        if self.refusal_text is not None:
            return self.refusal_text
        if slug is not None and slug in DEFAULT_REFUSAL_TEXTS:
            return DEFAULT_REFUSAL_TEXTS[slug]
        return GENERIC_REFUSAL_TEXT


def _pair(text: str, form: str, field: str, last: bool = False) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; a BadValue of ``field`` when malformed."""
    try:
        key, value = parse_pair(text, form, last=last)
    except ValueError as e:
        raise BadValue(str(e), field) from None
    assert key is not None
    return key, value


def _known_slug(key: str, known: Iterable[str] | None, mapping: dict[str, str], field: str) -> str:
    """``key``'s slug; a BadValue of ``field`` unless it is one of ``known`` (None: any)."""
    slug = slugify(key, mapping)
    if known is not None and slug not in known:
        raise BadValue(f"{key!r} is not one of the categories ({', '.join(known)})", field)
    assert slug is not None
    return slug


@dataclass
class TagStats:
    """What one run tagged: counts per (label, category slug), and what needs a warning."""

    counts: Counter = field(default_factory=Counter)
    default_refusals: int = 0
    token_in_text: int = 0
    first_token_in_text: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary_lines(self) -> list[str]:
        """A short human summary (for stderr): totals per label, then per category."""
        lines = [f"tagged {self.total} record{'s' if self.total != 1 else ''}"]
        for label in LABELS:
            per_cat = {cat: n for (lab, cat), n in self.counts.items() if lab == label}
            n = sum(per_cat.values())
            line = f"  {label:<8}{n:>8}"
            if n:
                order = sorted(per_cat.items(), key=lambda kv: (-kv[1], kv[0]))
                line += "  " + ", ".join(f"{cat} {k}" for cat, k in order)
            lines.append(line)
        if self.default_refusals:
            lines.append(
                f"  {self.default_refusals} refusal(s) had no response and got the default refusal text"
            )
        if self.token_in_text:
            lines.append(
                f"  warning: {self.token_in_text} record(s) contain a control token string in their own text "
                f"(first at {self.first_token_in_text})"
            )
        return lines


class Tagger:
    """Tags records one at a time; ``tag()`` raises RecordError with the file and line."""

    def __init__(self, options: TagOptions):
        self.options = options
        self.token_map = options.token_map
        self.category_mode = options.token_map.mode == CATEGORY
        self.tokens = options.token_map.tokens()
        self.stats = TagStats()

    # -- one field at a time -------------------------------------------------------------

    def _conversation(self, rec: Mapping[str, Any], name: str, line: int) -> list[dict[str, Any]]:
        return conversation(rec, name, line, hint="put the assistant answer in 'response', not in 'messages'")

    def _label(self, rec: Mapping[str, Any], name: str, line: int) -> tuple[str, bool]:
        """The row's label, and whether it came from the default (``--label``)."""
        label = rec.get("label")
        if label is None or label == "":
            if self.options.default_label is None:
                raise RecordError(
                    "no 'label'", path=name, line=line, hint="use --label refuse|respond for rows without one"
                )
            return self.options.default_label, True
        if label not in LABELS:
            raise RecordError(
                f"unknown label {label!r} (expected 'refuse' or 'respond')", path=name, line=line
            )
        return label, False

    def _slug(self, rec: Mapping[str, Any], name: str, line: int) -> str | None:
        try:
            return slugify(rec.get("category"), self.options.category_map)
        except ValueError as e:
            raise RecordError(str(e), path=name, line=line) from None

    def _token(self, label: str, slug: str | None, name: str, line: int) -> str:
        if label == "refuse" and self.category_mode:
            if slug is None:
                raise RecordError("a refusal row needs a 'category' in category mode", path=name, line=line)
            if slug not in self.token_map.categories:
                raise RecordError(
                    f"unknown category {slug!r} (known: {', '.join(self.token_map.categories)})",
                    path=name,
                    line=line,
                    hint="add it with --categories, or map it to a known one with --map 'NAME=SLUG'",
                )
        return self.token_map.token_for(label, slug)

    def _answer(self, rec: Mapping[str, Any], label: str, slug: str | None, name: str, line: int) -> str:
        fieldname = self.options.response_field
        answer = rec.get(fieldname)
        if answer is not None and not isinstance(answer, str):
            raise RecordError(
                f"{fieldname!r} must be a string, got {json_type(answer)}", path=name, line=line
            )
        if answer is None or not answer.strip():
            if label == "refuse":
                self.stats.default_refusals += 1
                return self.options.refusal_for(slug)
            what = "no" if answer is None else "an empty"
            raise RecordError(
                f"a respond row with {what} {fieldname!r}",
                path=name,
                line=line,
                hint="point --response-field at the field with the answer (CoCoNot pref: --response-field chosen)",
            )
        return answer

    # -- one record ----------------------------------------------------------------------

    def tag(self, rec: dict[str, Any], name: str = "<stdin>", line: int | None = None) -> dict[str, Any]:
        conversation = self._conversation(rec, name, line)
        label, defaulted = self._label(rec, name, line)
        slug = self._slug(rec, name, line)
        token = self._token(label, slug, name, line)
        answer = self._answer(rec, label, slug, name, line)

        if self._mentions_token(conversation, answer):
            self.stats.token_in_text += 1
            if self.stats.first_token_in_text is None:
                self.stats.first_token_in_text = f"{name}:{line}"

        conversation.append({"role": "assistant", "content": f"{token}{self.options.separator}{answer}"})
        out = dict(rec)  # keeps the input's key order; new keys go at the end
        if defaulted:
            out["label"] = label
        out["messages"] = conversation
        if self.options.control_field:
            out[self.options.control_field] = token
        self.stats.counts[(label, slug or NO_CATEGORY)] += 1
        return out

    def _mentions_token(self, conversation: list[dict[str, Any]], answer: str) -> bool:
        for tok in self.tokens:
            if tok in answer:
                return True
            for m in conversation:
                if tok in m["content"]:
                    return True
        return False

    def tag_all(self, records: Iterable[Any], name: str = "<stdin>") -> Iterator[dict[str, Any]]:
        """Yield the tagged record for each record or ``(line_number, record)`` pair."""
        for line, rec in numbered(records):
            yield self.tag(rec, name, line)


def tag(
    records: Iterable[Any],
    options: TagOptions | TokenMap | None = None,
    name: str = "<input>",
    stats: TagStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Each record (or ``(line, record)`` pair from :func:`rtools.records.read_records`) tagged: what
    rt-tag writes, one at a time. ``options``: a :class:`TagOptions`, or just a :class:`TokenMap`
    (default: single mode, ``[refuse]``/``[respond]``). ``stats``, when given, counts what was tagged.
    A bad record raises RecordError naming ``name`` and its line."""
    if isinstance(options, TokenMap):
        options = TagOptions(token_map=options)
    tagger = Tagger(options or TagOptions())
    if stats is not None:
        tagger.stats = stats
    return tagger.tag_all(records, name)
