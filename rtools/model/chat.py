"""Rendering records as token ids with the model's chat template.

Only the template's own structure can become a special token. The template is rendered once with
the record's text and once with each message's content between markers, which shows where every
piece of content lies in the rendered text (after whatever the template does to it: trimming,
joining the system prompt into the first user turn). The rendered text is then encoded with the
tokenizer's special tokens allowed, and wherever a special or added token -- a control token
anywhere, or any other one inside a message's content -- comes out, the whole stretch of text
between the template's own tokens around it is encoded again as ordinary text. The result is what
a tokenizer without those tokens would give for that stretch (BPE merges across the typed token's
edges included); the only special ids in a prompt are those the template places, and the only
control-token ids those this module places explicitly.
"""

from __future__ import annotations

import re
from typing import Any

from ..records import RecordError, conversation

SENTINEL = "\u2063RTOOLS\u2063ANSWER\u2063"

TRUNCATE_HELP = (
    "When a prompt is longer than the model's context: left drops turns from the start (the system "
    "prompt, then the oldest exchanges) and keeps the most recent ones; right drops the exchanges just "
    "before the last user turn, newest first, and keeps the start. Whole turns are dropped; the last "
    "user turn is never cut (alone too long, it is still an error). Default: an error."
)
#: The configuration fields a prompt-length error may name: ``truncate``, and ``max_new_tokens`` in
#: rt-generate's prompt budget (the ``what`` of :meth:`ChatEncoder.encode_prompt_within`).
WHAT_FIELDS = ("truncate", "max_new_tokens")


def record_messages(
    record: dict[str, Any], name: str | None = None, line: int | None = None
) -> list[dict[str, str]]:
    """The conversation to decide on: ``messages`` (ending with a user turn) or ``prompt``; a record
    with both is an error (which one is decided on must not be a guess)."""
    if record.get("prompt") is not None and record.get("messages") is not None:
        raise RecordError(
            "the record has both 'prompt' and 'messages': which one to decide on is ambiguous",
            path=name,
            line=line,
            hint="keep one of them; a tagged training record's 'messages' end with its answer: score its 'prompt'",
        )
    msgs = conversation(record, name, line, hint="drop the answer, or score the prompt field")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def context_limit(model: Any, tokenizer: Any = None) -> tuple[int, str] | None:
    """The most tokens the model can attend to, and where that number comes from."""
    limits: list[tuple[int, str]] = []
    config = getattr(model, "config", None)
    if config is not None:
        get_text = getattr(config, "get_text_config", None)
        text_config = get_text() if callable(get_text) else config
        n = getattr(text_config, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            limits.append((n, "max_position_embeddings"))
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10**7:
        limits.append((n, "the tokenizer's model_max_length"))
    return min(limits) if limits else None


def _template_error() -> tuple[type[BaseException], ...]:
    try:
        from jinja2.exceptions import TemplateError
    except ImportError:  # pragma: no cover
        return ()
    return (TemplateError,)


class ChatEncoder:
    """Encodes prompts and answers for one tokenizer and one set of control tokens."""

    def __init__(self, tokenizer: Any, control_tokens: list[str]):
        self.tok = tokenizer
        self.control_tokens = list(control_tokens)
        self.control_ids = [tokenizer.convert_tokens_to_ids(t) for t in control_tokens]
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or (unk is not None and i == unk) for i in self.control_ids):
            raise ValueError(f"control tokens {control_tokens} are not in the tokenizer's vocabulary")
        self._control = set(self.control_ids)
        # every id a piece of typed text could turn into without being ordinary text
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added: dict[int, str] = {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}
        for i in getattr(tokenizer, "all_special_ids", None) or []:
            self._added.setdefault(int(i), tokenizer.convert_ids_to_tokens(int(i)))
        for i, t in zip(self.control_ids, self.control_tokens, strict=True):
            self._added.setdefault(i, t)
        self.special_ids = frozenset(self._added)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._mid_pre_tokenizer = self._pre_tokenizer_after_start()
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._suffix = self._answer_suffix()

    # -- text -> ids ---------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Encode template text (its special tokens allowed) with control tokens neutralised."""
        return self._encode(text, [])

    def encode_content(self, text: str, start: bool = True) -> list[int]:
        """Encode a record's text as ordinary text: no special, added or control token can come out."""
        return self._plain(text, start)

    def _encode(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """Encode text; special/added ids inside ``spans`` (content) and control ids are re-encoded as text."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        structural = [False] * len(ids)
        forged = False
        for k, i in enumerate(ids):
            if i not in self._added:
                continue
            if i in self._control or self._inside(text, offsets[k], self._added[i], spans):
                forged = True
            else:
                structural[k] = True
        if not forged:
            return ids
        out: list[int] = []
        seg: list[int] = []
        seg_start = 0

        def flush(end: int) -> None:
            if any(i in self._added for i in seg):
                out.extend(self._plain(text[seg_start:end], seg_start == 0))
            else:
                out.extend(seg)

        for k, i in enumerate(ids):
            if structural[k]:
                flush(offsets[k][0])
                out.append(i)
                seg, seg_start = [], offsets[k][1]
            else:
                seg.append(i)
        flush(len(text))
        return out

    @staticmethod
    def _inside(text: str, offset: tuple[int, int], literal: str, spans: list[tuple[int, int]]) -> bool:
        s, e = offset
        at = text.find(literal, s, e) if literal else -1
        if at >= 0:  # lstrip/rstrip tokens take whitespace around them: judge by the token's own text
            s, e = at, at + len(literal)
        return any(a < e and s < b for a, b in spans)

    def _pre_tokenizer_after_start(self) -> Any:
        """The pre-tokenizer for text that does not start the input (Metaspace 'first' adds no ▁)."""
        bt = self._backend
        pre = getattr(bt, "pre_tokenizer", None) if bt is not None else None
        if pre is None or getattr(pre, "prepend_scheme", None) != "first":
            return pre
        from tokenizers.pre_tokenizers import Metaspace

        return Metaspace(replacement=pre.replacement, prepend_scheme="never", split=pre.split)

    def _plain(self, text: str, start: bool = True) -> list[int]:
        """Ordinary text, as the tokenizer's normalizer, pre-tokenizer and model see it (no added tokens).

        ``start`` says whether the text starts the input (some pre-tokenizers add a prefix there only).
        """
        if not text:
            return []
        bt = self._backend
        if bt is None:  # a slow tokenizer: its own way of ignoring special tokens
            ids = self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            return [i for i in ids if i not in self._control]
        norm = bt.normalizer.normalize_str(text) if bt.normalizer is not None else text
        pre = bt.pre_tokenizer if start else self._mid_pre_tokenizer
        pieces = pre.pre_tokenize_str(norm) if pre is not None else [(norm, (0, len(norm)))]
        return [t.id for piece, _ in pieces for t in bt.model.tokenize(piece)]

    # -- chat template -------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
        if self.has_template:
            return self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        parts = [f"{m['role'].capitalize()}: {m['content']}\n" for m in messages]
        return "".join(parts) + ("Assistant: " if generation_prompt else "")

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._render(messages)

    def render_with_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered prompt and the character spans of the messages' content in it.

        Raises ValueError when the template rejects the conversation or changes content in a way
        that cannot be followed (then nothing is encoded rather than something unchecked).
        """
        errors = _template_error()
        try:
            text = self._render(messages)
            msgs = [dict(m) for m in messages]
            for m in msgs:  # a template that trims content renders the trimmed content the same
                c = m["content"]
                for variant in (c.strip(), c.lstrip(), c.rstrip()):
                    if variant != c and self._render(_with(msgs, m, variant)) == text:
                        m["content"] = variant
                        break
            used = "".join(m["content"] for m in msgs)
            a, b = _marker_chars(used + text)
            marked = [{**m, "content": f"{a}{k}<{b}{m['content']}{a}{k}>{b}"} for k, m in enumerate(msgs)]
            marked_text = self._render(marked)
        except errors as e:
            raise ValueError(f"the model's chat template rejects this conversation: {e}") from None
        pattern = re.compile(re.escape(a) + r"(\d+)([<>])" + re.escape(b))
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        opened: dict[str, int] = {}
        pos = last = 0
        for m in pattern.finditer(marked_text):
            pieces.append(marked_text[last : m.start()])
            pos += m.start() - last
            last = m.end()
            if m.group(2) == "<":
                opened[m.group(1)] = pos
            elif m.group(1) in opened:
                spans.append((opened.pop(m.group(1)), pos))
        pieces.append(marked_text[last:])
        if "".join(pieces) != text or opened:
            raise ValueError(
                "the model's chat template changes message content in a way rtools cannot follow, "
                "so special tokens typed in it could not be told from the template's own"
            )
        return text, sorted(spans)

    def _answer_suffix(self) -> str:
        """What the template puts after an assistant answer (e.g. ``<|im_end|>\\n``)."""
        if not self.has_template:
            return "\n"
        msgs = [{"role": "user", "content": "hi"}]
        prompt = self.render_prompt(msgs)
        full = self.tok.apply_chat_template(
            msgs + [{"role": "assistant", "content": SENTINEL}], tokenize=False
        )
        if not full.startswith(prompt) or SENTINEL not in full:
            eos = self.tok.eos_token or ""
            return eos
        return full[len(prompt) :].split(SENTINEL, 1)[1]

    def encode_prompt(
        self, messages: list[dict[str, str]], name: str | None = None, line: int | None = None
    ) -> list[int]:
        """Token ids of the prompt up to the first assistant position (generation prompt included).

        Only the template's structure becomes special tokens; the messages' content is ordinary text.
        A conversation the template rejects is a RecordError at ``name:line``.
        """
        try:
            text, spans = self.render_with_spans(messages)
        except ValueError as e:
            raise RecordError(str(e), path=name, line=line) from None
        return self._encode(text, spans)

    def encode_prompt_within(
        self,
        messages: list[dict[str, str]],
        limit: int | None,
        truncate: str | None = None,
        name: str | None = None,
        line: int | None = None,
        what: str | None = None,
    ) -> tuple[list[int], int]:
        """encode_prompt, at most ``limit`` tokens: (ids, number of messages dropped).

        Past the limit it is a RecordError naming the length and the limit (``what`` says how the
        limit reads, e.g. "512 (max_position_embeddings)"), unless ``truncate``
        ('left' or 'right', see TRUNCATE_HELP) drops whole earlier turns until the prompt fits.
        A conversation that cannot fit whatever its tokens (:meth:`min_tokens`, from its length in
        characters) is refused, or its turns dropped, before it is rendered or tokenized: a prompt
        of megabytes costs a pass over its characters, not the tokenizer's time and memory.
        """
        lower = self.min_tokens(messages, limit)
        if limit is None or lower <= limit:
            ids = self.encode_prompt(messages, name, line)
            if limit is None or len(ids) <= limit:
                return ids, 0
            length = f"{len(ids)} tokens"
        else:
            length = f"at least {lower} tokens ({sum(len(m['content']) for m in messages)} characters)"
        what = what or str(limit)
        if truncate is None:
            raise RecordError(
                f"the prompt is {length}, past the model's limit of {what}",
                path=name,
                line=line,
                hint="shorten it, or pass truncate=left|right to drop earlier turns",
                fields=WHAT_FIELDS,
            )
        steps = _drop_steps(messages, truncate)
        # each step drops more turns than the one before: skip those that cannot fit unencoded
        lo = next(
            (k for k, step in enumerate(steps, 1) if self.min_tokens(step, limit) <= limit), len(steps) + 1
        )
        hi = len(steps)  # the fewest steps that fit; steps[-1] leaves the last user turn alone
        best: list[int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = self.encode_prompt(steps[mid - 1], name, line)
            if len(cand) <= limit:
                best, hi = cand, mid - 1
            else:
                lo = mid + 1
        if best is None:
            alone = self.min_tokens(messages[-1:], limit)
            alone_length = (
                f"{len(self.encode_prompt(messages[-1:], name, line))} tokens"
                if alone <= limit
                else f"at least {alone} tokens ({len(messages[-1]['content'])} characters)"
            )
            raise RecordError(
                f"the prompt is {length}, past the model's limit of {what}, and the last user "
                f"turn alone is {alone_length}; truncate never cuts it",
                path=name,
                line=line,
                hint="shorten the last user turn",
                fields=WHAT_FIELDS,
            )
        kept = steps[lo - 1]
        return best, len(messages) - len(kept)

    def min_tokens(self, messages: list[dict[str, str]], limit: int | None = None) -> int:
        """A lower bound on the tokens of ``messages`` as a prompt, from their characters alone: no
        token of the vocabulary spells more than :meth:`max_token_chars` characters, so content of
        C characters (after the tokenizer's normalizer, and trimmed as a template may trim it) is at
        least C / that many tokens. 0 when it cannot be told (a tokenizer without a vocabulary to
        read) or, given the ``limit`` it is compared with, when the bound cannot exceed it (then the
        vocabulary is not even read: an ordinary prompt costs nothing)."""
        if limit is None:
            return 0
        contents = [m["content"] for m in messages]
        chars = sum(map(len, contents))
        if chars <= limit:
            return 0
        per = self.max_token_chars()
        if per is None or chars <= limit * per:
            return 0
        bt = self._backend
        norm = getattr(bt, "normalizer", None) if bt is not None else None
        total = 0
        for c in contents:
            c = norm.normalize_str(c) if norm is not None else c
            total += -(-len(c.strip()) // per)
        return total

    def max_token_chars(self) -> int | None:
        """The most characters one token of the vocabulary spells (its string: a byte-level token's
        characters are bytes, each at least one character of text; a SentencePiece piece's are the
        text's own), computed once; None when the tokenizer has no vocabulary to read."""
        if not hasattr(self, "_max_token_chars"):
            try:
                vocab = self.tok.get_vocab()
                self._max_token_chars = max(map(len, vocab), default=0) or None
            except Exception:  # a tokenizer without get_vocab: no bound
                self._max_token_chars = None
        return self._max_token_chars

    def encode_answer(self, answer: str, max_tokens: int | None = None, close: bool = True) -> list[int]:
        """Token ids of an answer (without its control token), cut to max_tokens, then the end of turn.

        The answer is a record's text: it is encoded as ordinary text (it follows the control token)."""
        ids = self._plain(answer, start=False)
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[:max_tokens]
        if close and self._suffix:
            ids = ids + self.encode_text(self._suffix)
        return ids


def _with(msgs: list[dict[str, str]], target: dict[str, str], content: str) -> list[dict[str, str]]:
    return [{**m, "content": content} if m is target else m for m in msgs]


def _marker_chars(text: str) -> tuple[str, str]:
    """Two private-use characters that occur nowhere in text (so markers cannot be forged)."""
    free = (chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
    return next(free), next(free)


def _drop_steps(messages: list[dict[str, str]], side: str) -> list[list[dict[str, str]]]:
    """The conversations ``truncate`` tries, each shorter than the one before; the last is the last
    user turn alone. Turns go in user/assistant pairs so that the roles still alternate."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    history = messages[len(system) : -1]
    last = messages[-1:]
    pairs = [history[i : i + 2] for i in range(0, len(history), 2)]
    out: list[list[dict[str, str]]] = []
    if side == "left":
        if system:
            out.append([m for p in pairs for m in p] + last)
        for k in range(1, len(pairs) + 1):
            out.append([m for p in pairs[k:] for m in p] + last)
    else:
        for k in range(len(pairs) - 1, -1, -1):
            out.append(system + [m for p in pairs[:k] for m in p] + last)
        if system:
            out.append(last)
    if not out or out[-1] != last:
        out.append(last)
    return out
