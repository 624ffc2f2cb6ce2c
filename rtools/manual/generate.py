"""rt-generate(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

from ..refusal_detector import CLARIFICATION_PHRASES, REFUSAL_PHRASES
from . import MODEL_ENVIRONMENT

MAN = {
    "FIELDS READ": (
        "prompt: a single-turn user request (string), or\n\n"
        "messages: a conversation, a list of {role, content} ending with the user turn to answer.\n\n"
        'decision: "refuse" or "respond" (optional, e.g. from rt-threshold). Read only with --use-decision, '
        "which forces the control token it names; null counts as absent. Without --use-decision a record's "
        "decision (and decision_cat) is never trusted: the decision is made anew and replaces it, and a "
        "warning on stderr names the fields and the first such record, once.\n\n"
        "decision_cat: with --use-decision and a category-token model, the category of a refusal decision "
        "(a slug of the model's token map); null picks the model's most likely category. Ignored by "
        "single-token models.\n\n"
        "Every other field is passed through untouched, in its original key order. User text that spells "
        "a control token (e.g. [refuse]) is encoded as ordinary text, so it can neither force nor suppress "
        "a refusal. Blank lines are skipped."
    ),
    "FIELDS WRITTEN": (
        "p_refuse: total probability of the refusal token(s) at the first assistant position "
        "(full-vocabulary softmax at temperature 1, as rt-score; --temperature does not change it).\n\n"
        "p_respond: probability of the respond token.\n\n"
        "p_cat: {category: probability of its refusal token} (category-token models only).\n\n"
        'decision: "refuse" or "respond", the decision the forced token stands for.\n\n'
        "decision_cat: the category of the forced refusal token (category-token models), else null.\n\n"
        "control: the control token forced as the first assistant token, e.g. [refuse].\n\n"
        "forced: true when a threshold, --logit-bias or the record's decision chose the token; false "
        "when it is the model's own choice.\n\n"
        "generation: the answer after the control token: special tokens removed, cut at the first --stop "
        "string, surrounding whitespace stripped. The control token is not part of it, and no control "
        "token is ever generated after it (a model that would repeat one goes on with its next best "
        "token). --output-field "
        "NAME writes it to NAME instead; an input `response` (the gold answer of training data) keeps "
        "its value unless NAME is response.\n\n"
        "refusal: true when the generation starts with a refusal phrase (REFUSAL DETECTOR).\n\n"
        'consistent: refusal == (decision == "refuse"); rt-metrics reports its mean as agreement_rate.\n\n'
        "An existing field of the same name is replaced in place; the others are added at the end. "
        "Score fields computed from other scores are removed, with the same warning: p_refuse_raw and "
        "p_cat_raw (rt-threshold's), and p_cat when the model has a single refusal token."
    ),
    "REFUSAL DETECTOR": (
        "An answer is a refusal when, after leading whitespace, quotes and markdown emphasis are "
        "stripped, it starts with one of the refusal phrases, compared case-insensitively (curly "
        "apostrophes read as straight ones, runs of whitespace as one space), the phrase ending at a "
        "word boundary. Only the start counts. The default phrases:\n\n"
        + "; ".join(REFUSAL_PHRASES)
        + ".\n\n"
        "Requests for clarification count as refusals, as in CoCoNot, where asking for the missing part "
        "of an incomplete request is the expected non-compliance: "
        + "; ".join(CLARIFICATION_PHRASES)
        + ".\n\n"
        "--refusal-phrases FILE replaces the list, --refusal-phrases +FILE extends it: one phrase a "
        "line, blank lines and lines starting with # skipped. The detector is deterministic, unlike the "
        "paper's LLM judge sampled at temperature 0.6, and it is a screen, not a judge: an answer that "
        "complies after an apology, or refuses without a listed opening, is misread."
    ),
    "ENVIRONMENT": MODEL_ENVIRONMENT,
    "EXAMPLES": (
        "Answer with the model's own choice of control token:\n"
        "    rt-generate prompts.jsonl --model runs/adapter > answers.jsonl\n\n"
        "Refuse whenever the refusal token gets at least 30%, and check the answers agree:\n"
        "    rt-generate --threshold 0.3 test.jsonl | rt-metrics\n\n"
        "Decide with fitted per-category thresholds, then generate; the same rule applied here:\n"
        "    rt-generate --thresholds cats.json test.jsonl > answers.jsonl\n\n"
        "or follow the decisions the records carry (trusted input only: a record's decision forces its token):\n"
        "    rt-score test.jsonl | rt-threshold --thresholds cats.json | rt-generate --use-decision > answers.jsonl\n\n"
        "Nudge towards refusing instead of thresholding (lower the respond token's logit; a single-token "
        "model can also raise '[refuse]', a category model '[refuse:SLUG]'):\n"
        "    rt-generate --logit-bias '[respond]=-2.0' prompts.jsonl\n\n"
        "Sample, reproducibly, and stop at a blank line:\n"
        "    rt-generate --temperature 0.7 --top-p 0.9 --seed 1 --stop $'\\n\\n' prompts.jsonl"
    ),
}

HELP = """Generate answers after a forced control token, so that they obey the thresholds.

Reads prompt records (`prompt`, or `messages` ending with a user turn) from FILE, or stdin
when FILE is `-` or missing. For each one it scores the control tokens at the first
assistant position (p_refuse, p_respond and, for a category-token model, p_cat, as rt-score
does), decides which control token to force, appends that token to the prompt by id, and
generates the answer after it. Each record is written back, in input order, with the scores,
`decision`, `decision_cat`, `control`, `forced`, `generation` (the answer; --output-field
names another field), `refusal` and `consistent`. Every input field keeps its value, the
gold `response` of training data included.

\b
The control token, first rule that applies:
  --threshold/--cat/--thresholds  the rt-threshold rule on this model's scores
  --logit-bias TOKEN=B            the most likely control token after adding
                                  B to TOKEN's logit
  --use-decision                  the record's `decision` (e.g. from
                                  rt-threshold); `decision_cat` picks the
                                  category token (null: the most likely)
  (none of these)                 the model's own choice, the most likely
                                  control token (the only unforced case)

A record's own `decision` is read only with --use-decision: otherwise it is decided anew and
replaced, with one warning on stderr (a user who writes records cannot force an answer).

The scores and the start of generation come from one forward pass over the prompt: its KV
cache is kept, so forcing the token costs no second pass. Greedy decoding by default
(--temperature 0); sampling is seeded per record (--seed), so an answer does not depend on
the batch it is in. Records are read in windows (--window), batched by length, and written
window by window.

`refusal` says whether the answer starts with a refusal phrase (see REFUSAL DETECTOR in the
man page) and `consistent` whether that agrees with the decision; rt-metrics reports their
agreement rate.

\b
  rt-generate prompts.jsonl --model out/adapter > answers.jsonl
  rt-score test.jsonl | rt-threshold -t 0.3 | rt-generate --use-decision | rt-metrics
"""

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "logit-bias": "Add B to control token TOKEN's logit before choosing (repeatable), e.g. '[refuse]=2.0'.",
    "model": (
        "An rt-lora output directory, a merged model, or `embedded` (the untrained base). "
        "Default: $RT_MODEL, else the shipped default scorer."
    ),
    "plain": (
        "The model's own answer, with no control token forced or generated and no scores: only "
        "the answer field is written. With --model embedded: the base model's answers, the "
        "self-distilled respond answers of a training mix (python -m rtools.datasets.mix --answer self)."
    ),
    "output-field": (
        "The field the answer is written to. Input fields keep their values unless NAME is one of "
        "them (e.g. --output-field response replaces the gold answer)."
    ),
    "refusal-phrases": (
        "Refusal phrases for the detector, one a line: FILE replaces the defaults, +FILE extends them."
    ),
    "use-decision": (
        "Force the control token the record's `decision` and `decision_cat` name (e.g. from rt-threshold), "
        "instead of deciding anew; for records from a trusted pipeline only. Not with --threshold, --cat, "
        "--thresholds, --logit-bias or --plain."
    ),
    "stop": "Cut the answer at the first occurrence of STRING (repeatable; the earliest wins).",
    "top-p": "Nucleus sampling: sample from the most likely tokens whose probability reaches P.",
    "window": "Records read, batched by length and generated together before they are written.",
}
