"""Rendering records as token ids with the model's chat template.

Control tokens are special tokens, so a tokenizer would turn the text ``[refuse]`` typed by a user
into the control token itself. Every piece of text here is encoded with control tokens neutralised:
wherever a control-token id comes out of the tokenizer, its characters are re-encoded as ordinary
text. The only control-token ids in a sequence are the ones this module places explicitly.
"""

from __future__ import annotations

from typing import Any

from ..records import conversation

SENTINEL = "\u2063RTOOLS\u2063ANSWER\u2063"


def record_messages(
    record: dict[str, Any], name: str | None = None, line: int | None = None
) -> list[dict[str, str]]:
    """The conversation to decide on: ``messages`` (ending with a user turn) or ``prompt``."""
    msgs = conversation(record, name, line, hint="drop the answer, or score the prompt field")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


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
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._suffix = self._answer_suffix()

    # -- text -> ids ---------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Encode text (template special tokens allowed) with control tokens neutralised.

        Where a control token comes out of the tokenizer, the whole stretch of text between the
        template's own special tokens around it is encoded again as ordinary text, so the result is
        what a tokenizer without the control tokens would give (BPE merges across the typed token's
        edges included).
        """
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if not self._control.intersection(ids):
            return list(ids)
        offsets = enc["offset_mapping"]
        other_special = set(getattr(self.tok, "all_special_ids", []) or []) - self._control
        out: list[int] = []
        i = 0
        while i < len(ids):
            if ids[i] in other_special or not self._segment_has_control(ids, i, other_special):
                out.append(ids[i])
                i += 1
                continue
            j = i
            while j < len(ids) and ids[j] not in other_special:
                j += 1
            start, end = offsets[i][0], offsets[j - 1][1]
            out.extend(self._plain(text[start:end]))
            i = j
        return out

    def _plain(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [i for i in ids if i not in self._control]

    def _segment_has_control(self, ids: list[int], i: int, stops: set[int]) -> bool:
        for k in range(i, len(ids)):
            if ids[k] in stops:
                return False
            if ids[k] in self._control:
                return True
        return False

    # -- chat template -------------------------------------------------------------------------
    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.has_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = [f"{m['role'].capitalize()}: {m['content']}\n" for m in messages]
        return "".join(parts) + "Assistant: "

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

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt up to the first assistant position (generation prompt included)."""
        return self.encode_text(self.render_prompt(messages))

    def encode_answer(self, answer: str, max_tokens: int | None = None, close: bool = True) -> list[int]:
        """Token ids of an answer (without its control token), cut to max_tokens, then the end of turn."""
        ids = self.encode_text(answer)
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[:max_tokens]
        if close and self._suffix:
            ids = ids + self.encode_text(self._suffix)
        return ids
