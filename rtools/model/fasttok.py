"""A tokenizer for rtools' chat encoding without transformers: the `tokenizers` library and jinja2.

rtools.model.chat.ChatEncoder asks a tokenizer for a few things: its chat template rendered as
text, the ids and character offsets of a text (special tokens allowed), the normalizer,
pre-tokenizer and model of its backend (to encode a record's text as ordinary text), and which ids
are added or special. transformers answers them after loading a tokenizer its own way (it may add
tokens, set the backend's flags, pick the chat template). :func:`tokenizer_state` records those
answers from a tokenizer transformers loaded -- the backend as it stands, serialised, and the
values -- and :class:`FastTokenizer` gives the same answers from the record, with the
``tokenizers`` library and the chat template compiled as transformers compiles it (a sandboxed
jinja2 environment with the same options, filters and globals). Importing transformers costs about
a second of CPU; these two cost a few hundredths.

The record is made once, by rtools.model.merged_cache, into the cached merge of an adapter, and only
when a FastTokenizer made from it encodes the probe conversations (special and control tokens typed
in the text included), the control tokens and the answer suffix exactly as the transformers
tokenizer does; otherwise the scorer loads the tokenizer with transformers.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

#: the most a tokenizer's model_max_length may be to be kept as a number (larger: "no limit")
MAX_LENGTH = 2**53


def tokenizer_state(tok: Any) -> tuple[str, dict[str, Any]] | None:
    """(the backend serialised, the values ChatEncoder and the scorer read) of a tokenizer that
    transformers loaded, or None when it has no `tokenizers` backend."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    template = tok.get_chat_template() if getattr(tok, "chat_template", None) else None
    limit = getattr(tok, "model_max_length", None)
    state = {
        "chat_template": template,
        "special_tokens_map": {k: str(v) for k, v in tok.special_tokens_map.items()},
        "added_tokens": {
            str(int(i)): str(getattr(t, "content", t)) for i, t in tok.added_tokens_decoder.items()
        },
        "all_special_ids": [int(i) for i in tok.all_special_ids],
        "unk_token_id": tok.unk_token_id,
        "pad_token_id": tok.pad_token_id,
        "eos_token": tok.eos_token,
        "model_max_length": limit if isinstance(limit, int) and 0 < limit < MAX_LENGTH else None,
        "length": len(tok),
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
    }
    return backend.to_str(), state


class _TemplateDict:
    """``dict`` in a template (as transformers gives it: no attribute access to the class)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 (the template's name for it)
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=8)
def compile_template(source: str) -> Any:
    """A chat template compiled as transformers compiles it (transformers.utils.chat_template_utils:
    ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, tojson, raise_exception,
    strftime_now, dict, namespace). A template that uses transformers' ``{% generation %}`` tag does
    not compile here (jinja2's TemplateSyntaxError): rtools then uses transformers."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    class TemplateNamespace(jinja2.utils.Namespace):
        """namespace() that refuses underscore-prefixed attributes (as transformers' does)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's own signature trick)
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}."
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


class FastTokenizer:
    """The part of a transformers tokenizer that rtools' scoring uses, from :func:`tokenizer_state`."""

    def __init__(self, backend_json: str, state: dict[str, Any]):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend_json)
        # as a transformers tokenizer called without padding or truncation sets its backend
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(state["split_special_tokens"])
        self.backend_tokenizer = backend
        self.chat_template = state["chat_template"]
        self.special_tokens_map = dict(state["special_tokens_map"])
        self.added_tokens_decoder = {int(i): t for i, t in state["added_tokens"].items()}
        self.all_special_ids = list(state["all_special_ids"])
        self.unk_token_id = state["unk_token_id"]
        self.pad_token_id = state["pad_token_id"]
        self.eos_token = state["eos_token"]
        self.model_max_length = state["model_max_length"]
        self._length = int(state["length"])
        self._template = compile_template(self.chat_template) if self.chat_template else None

    def __len__(self) -> int:
        return self._length

    def __call__(
        self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        if add_special_tokens:
            raise ValueError("FastTokenizer encodes without the tokenizer's own special tokens only")
        enc = self.backend_tokenizer.encode(text, add_special_tokens=False)
        out: dict[str, Any] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> Any:
        if isinstance(tokens, str):
            i = self.backend_tokenizer.token_to_id(tokens)
            return self.unk_token_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> Any:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        """The template rendered as transformers renders it for plain role/content messages."""
        if tokenize:
            raise ValueError("FastTokenizer renders templates as text only (tokenize=False)")
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        chat = [{k: str(v) for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )
