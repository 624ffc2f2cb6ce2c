"""Categories and the token map: which control-token strings a model was trained with.

The token map is saved next to every adapter (``rtools_tokens.json``) so that rt-score
reads exactly the tokens rt-lora trained, with no flag to repeat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from .records import RecordError, atomic_write_bytes, json_type, read_json_file

#: CoCoNot's five top-level categories and their slugs.
COCONOT_CATEGORIES: dict[str, str] = {
    "Requests with safety concerns": "safety",
    "Humanizing requests": "humanizing",
    "Incomplete requests": "incomplete",
    "Indeterminate requests": "indeterminate",
    "Unsupported requests": "unsupported",
}
DEFAULT_CATEGORIES: tuple[str, ...] = ("safety", "humanizing", "incomplete", "indeterminate", "unsupported")

LABELS = ("refuse", "respond")
TOKEN_MAP_FILE = "rtools_tokens.json"
SINGLE, CATEGORY = "single", "category"


def slugify(name: Any, mapping: dict[str, str] | None = None) -> str | None:
    """Category name -> slug: a user mapping first, then CoCoNot's names, else the lowercase name."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"category must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        return None
    if mapping and name in mapping:
        return mapping[name]
    if name in COCONOT_CATEGORIES:
        return COCONOT_CATEGORIES[name]
    return name.lower()


def category_token(slug: str) -> str:
    return f"[refuse:{slug}]"


#: The shapes a control token may have: (opening, closing) around a non-empty name.
CONTROL_TOKEN_SHAPES = (("<|", "|>"), ("[", "]"), ("<", ">"))
TOKEN_MAP_KEYS = ("mode", "respond", "refuse", "categories")


def is_control_token_shape(token: str) -> bool:
    """True for ``[name]``, ``<name>`` and ``<|name|>`` on one line: never a plain word."""
    if "\n" in token or "\r" in token:
        return False
    return any(
        token.startswith(a) and token.endswith(b) and len(token) > len(a) + len(b)
        for a, b in CONTROL_TOKEN_SHAPES
    )


@dataclass
class TokenMap:
    """The control tokens of one model.

    single mode: one refusal token (``refuse``) and the respond token.
    category mode: one refusal token per category slug (``categories``) and the respond token.
    """

    mode: str = SINGLE
    respond: str = "[respond]"
    refuse: str | None = "[refuse]"
    categories: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in (SINGLE, CATEGORY):
            raise ValueError(f"unknown token mode {self.mode!r} (expected 'single' or 'category')")
        if self.mode == SINGLE and not self.refuse:
            raise ValueError("single mode needs a refusal token")
        if self.mode == CATEGORY:
            self.refuse = None
            if not self.categories:
                raise ValueError("category mode needs at least one category")
        tokens = self.tokens()
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"control tokens must be distinct: {tokens}")
        for t in tokens:
            if not isinstance(t, str):
                raise ValueError(f"control token must be a string, got {t!r}")
            if not t or t != t.strip():
                raise ValueError(f"control token {t!r} must be non-empty without surrounding spaces")
            if not is_control_token_shape(t):
                raise ValueError(
                    f"control token {t!r} must look like [name], <name> or <|name|> (one line), so that it "
                    "can never be an ordinary word of a tokenizer's vocabulary"
                )

    @classmethod
    def single(cls, refuse: str = "[refuse]", respond: str = "[respond]") -> TokenMap:
        return cls(mode=SINGLE, refuse=refuse, respond=respond)

    @classmethod
    def category(
        cls, slugs: Any = DEFAULT_CATEGORIES, respond: str = "[respond]", tokens: dict[str, str] | None = None
    ) -> TokenMap:
        tokens = tokens or {}
        return cls(
            mode=CATEGORY, respond=respond, categories={s: tokens.get(s, category_token(s)) for s in slugs}
        )

    def refusal_tokens(self) -> list[str]:
        """The refusal token strings, in a fixed order (single: one; category: one per slug)."""
        if self.mode == SINGLE:
            return [self.refuse]  # type: ignore[list-item]
        return list(self.categories.values())

    def tokens(self) -> list[str]:
        """All control tokens: the refusal token(s) first, then the respond token."""
        return [*self.refusal_tokens(), self.respond]

    def token_for(self, label: str, slug: str | None = None) -> str:
        if label == "respond":
            return self.respond
        if label != "refuse":
            raise ValueError(f"unknown label {label!r} (expected 'refuse' or 'respond')")
        if self.mode == SINGLE:
            return self.refuse  # type: ignore[return-value]
        if slug is None:
            raise ValueError("a refusal row needs a category in category mode")
        if slug not in self.categories:
            raise ValueError(f"unknown category {slug!r} (token map has: {', '.join(self.categories)})")
        return self.categories[slug]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode, "respond": self.respond}
        if self.mode == SINGLE:
            d["refuse"] = self.refuse
        else:
            d["categories"] = dict(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> TokenMap:
        """Parse a token map; ValueError naming what is wrong (not a JSON object, unknown keys such as a
        thresholds file's, wrong types)."""
        if not isinstance(d, dict):
            raise ValueError(f"a token map is a JSON object, got {json_type(d)}")
        unknown = [k for k in d if k not in TOKEN_MAP_KEYS]
        if unknown:
            hint = (
                " (this looks like a thresholds file)"
                if any(k in d for k in ("threshold", "default", "objective"))
                else ""
            )
            raise ValueError(
                f"not a token map: unexpected key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}{hint}; a token map has {', '.join(TOKEN_MAP_KEYS)}"
            )
        if "mode" not in d:
            raise ValueError('not a token map: no "mode" ("single" or "category")')
        mode = d["mode"]
        for key in ("respond", "refuse"):
            if key in d and not isinstance(d[key], str):
                raise ValueError(f'"{key}" must be a string, got {json_type(d[key])}')
        if mode == SINGLE:
            return cls.single(refuse=d.get("refuse", "[refuse]"), respond=d.get("respond", "[respond]"))
        if mode != CATEGORY:
            raise ValueError(f"unknown token mode {mode!r} (expected 'single' or 'category')")
        cats = d.get("categories")
        if not isinstance(cats, dict) or not all(isinstance(v, str) for v in cats.values()):
            raise ValueError(
                f'category mode needs "categories": {{slug: token string}}, got {json_type(cats)}'
            )
        return cls(mode=CATEGORY, respond=d.get("respond", "[respond]"), categories=dict(cats))

    def write(self, path: str | os.PathLike) -> None:
        """Write the map as JSON to ``path``; key order is kept, since category order fixes token ids."""
        atomic_write_bytes(path, orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")

    def save(self, directory: str | os.PathLike) -> str:
        """Write rtools_tokens.json into ``directory`` (see :meth:`write`)."""
        path = os.path.join(os.fspath(directory), TOKEN_MAP_FILE)
        self.write(path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> TokenMap:
        """The token map in file ``path`` (as :meth:`write` and ``rt-tag --token-map`` write it). A
        file that cannot be read, is not JSON (``file:line``) or is not a token map is a RecordError
        naming the file."""
        data = read_json_file(path, "a token map JSON file")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise RecordError(f"not a valid token map: {e}", path=os.fspath(path)) from None

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TokenMap:
        """The token map of a model directory (its rtools_tokens.json; see :meth:`read`)."""
        return cls.read(os.path.join(os.fspath(directory), TOKEN_MAP_FILE))
