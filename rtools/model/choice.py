"""Which control token rt-generate forces before an answer: plain Python on the decision rules of
rtools.thresholds, no torch.

:class:`ControlChooser` takes a prompt's control-token probabilities (and log-probabilities) and
returns a :class:`Choice`: by a threshold rule, by the model's own choice after a logit bias, by
the record's own ``decision`` (:func:`record_decision`), or the model's own most likely token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import parse_number, parse_pair
from ..records import RecordError
from ..thresholds import REFUSE, RESPOND, Thresholds, argmax_slug, own_rule
from ..tokens import CATEGORY, TokenMap
from .scoring import score_fields


def parse_logit_bias(text: str) -> tuple[str, float]:
    """``TOKEN=B`` -> (token, B); ValueError when malformed. B must be a finite number."""
    token, value = parse_pair(text, "TOKEN=B (e.g. '[refuse]=2.0')", last=True)
    assert token is not None
    return token, parse_number(value, f"bias for {token!r}")


def record_decision(
    record: Mapping[str, Any], token_map: TokenMap, name: str | None = None, line: int | None = None
) -> tuple[str, str | None] | None:
    """A record's own ``decision``/``decision_cat`` checked against the token map; None if absent.

    In single mode ``decision_cat`` is ignored. In category mode a refusal names its category, or
    leaves it null for the model's most likely category.
    """
    decision = record.get("decision")
    if decision is None:
        return None
    if decision not in (REFUSE, RESPOND):
        raise RecordError(
            f'decision must be "refuse" or "respond", got {decision!r}',
            path=name,
            line=line,
            hint="or give rule or logit_bias to decide anew",
            fields=("rule", "logit_bias"),
        )
    if decision == RESPOND or token_map.mode != CATEGORY:
        return decision, None
    cat = record.get("decision_cat")
    if cat is None:
        return REFUSE, None
    if not isinstance(cat, str) or cat not in token_map.categories:
        raise RecordError(
            f"decision_cat {cat!r} is not a category of this model (it has: {', '.join(token_map.categories)})",
            path=name,
            line=line,
        )
    return REFUSE, cat


@dataclass
class Choice:
    """The control token chosen for one prompt, and why."""

    decision: str
    decision_cat: str | None
    index: int  # into token_map.tokens()
    token: str
    forced: bool


@dataclass
class ControlChooser:
    """Which control token to force, in this order of precedence:

    1. ``rule`` (``--threshold``/``--cat``/``--thresholds``) on the model's own probabilities;
    2. ``bias`` (``--logit-bias``): the model's own choice after adding B to a token's logit;
    3. the record's own ``decision``/``decision_cat`` (e.g. from rt-threshold), passed to
       :meth:`choose` only when asked for (rt-generate --use-decision);
    4. the model's own choice (the most likely control token), which is the only unforced case.

    ``rule`` must already be resolved to the model's category slugs (``Thresholds.resolve``).
    """

    token_map: TokenMap
    rule: Thresholds | None = None
    bias: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = self.token_map.tokens()
        unknown = [t for t in self.bias if t not in tokens]
        if unknown:
            raise ValueError(
                f"logit_bias: {', '.join(map(repr, unknown))} "
                f"{'is not a control token' if len(unknown) == 1 else 'are not control tokens'} "
                f"of this model (it has: {' '.join(tokens)})"
            )
        if self.rule is not None and self.rule.mode == "own":
            self.rule = None

    def fields(self, probs: Sequence[float]) -> dict[str, Any]:
        """``p_refuse``/``p_respond``/``p_cat`` from control-token probabilities (token_map order)."""
        return score_fields(self.token_map, probs)

    def index_of(self, decision: str, slug: str | None) -> int:
        if decision == RESPOND:
            return len(self.token_map.tokens()) - 1
        if self.token_map.mode != CATEGORY:
            return 0
        return list(self.token_map.categories).index(slug)  # type: ignore[arg-type]

    def choose(
        self,
        fields: Mapping[str, Any],
        logprobs: Sequence[float],
        recorded: tuple[str, str | None] | None = None,
    ) -> Choice:
        """The choice for one prompt from its score fields and control-token log-probabilities."""
        cat_mode = self.token_map.mode == CATEGORY
        forced = True
        if self.rule is not None:
            decision, slug = self.rule.decide(fields)
        elif self.bias:
            tokens = self.token_map.tokens()
            biased = [lp + self.bias.get(t, 0.0) for lp, t in zip(logprobs, tokens, strict=True)]
            p_cat = dict(zip(self.token_map.categories, biased[:-1], strict=True)) if cat_mode else None
            decision, slug = own_rule(biased[0], biased[-1], p_cat)
        elif recorded is not None:
            decision, slug = recorded
            if decision == REFUSE and cat_mode and slug is None:
                slug = argmax_slug(fields["p_cat"])
        else:
            forced = False
            decision, slug = own_rule(
                fields["p_refuse"], fields["p_respond"], fields["p_cat"] if cat_mode else None
            )
        if not cat_mode:
            slug = None
        index = self.index_of(decision, slug)
        return Choice(decision, slug, index, self.token_map.tokens()[index], forced)
