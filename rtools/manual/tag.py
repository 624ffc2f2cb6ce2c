"""rt-tag(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

from ..tagging import DEFAULT_REFUSAL_TEXTS, GENERIC_REFUSAL_TEXT

MAN = {
    "FIELDS READ": [
        ("prompt", "The user request (string), used when there is no messages field."),
        (
            "messages",
            "The conversation: a list of {role, content} objects with string values, ending with a user "
            "turn. Used instead of prompt when present. Other keys of each turn are kept.",
        ),
        (
            "response",
            "The assistant answer, without any control token (another field with --response-field). "
            "Missing, null or empty: a refusal row gets the refusal text of its category; a respond row is "
            "an error.",
        ),
        ("label", "refuse or respond. Missing: the --label value, or an error without one."),
        (
            "category",
            "The refusal category: chooses the refusal token in category mode and the default refusal text "
            "in both modes. Mapped to a slug by --map, then CoCoNot's names "
            "(Requests with safety concerns -> safety, Humanizing requests -> humanizing, "
            "Incomplete requests -> incomplete, Indeterminate requests -> indeterminate, "
            "Unsupported requests -> unsupported), else lowercased.",
        ),
    ],
    "FIELDS WRITTEN": [
        (
            "messages",
            'The conversation plus the assistant turn {"role": "assistant", "content": TOKEN ANSWER}, '
            "where TOKEN is the control token and nothing separates it from ANSWER unless --separator says "
            "so. Replaces an input messages field in place; otherwise added after the input fields.",
        ),
        ("label", "Only for rows without a label, when --label is given: the --label value."),
        ("FIELD", "With --control-field FIELD: the control token string."),
        (
            "",
            "Every other field is copied unchanged, in its original key order. The input response field is "
            "left as it was.",
        ),
    ],
    "REFUSAL TEXTS": [
        "A refusal row without a response gets, in order of preference: the --refusal-text SLUG=TEXT of "
        "its category; the global --refusal-text TEXT; the built-in text of its category (below); or, "
        f"failing all of these: {GENERIC_REFUSAL_TEXT}",
        *DEFAULT_REFUSAL_TEXTS.items(),
    ],
    "TOKEN MAP": (
        '--token-map FILE writes the control tokens as JSON: {"mode": "single", "refuse": "[refuse]", '
        '"respond": "[respond]"} or {"mode": "category", "categories": {SLUG: TOKEN, ...}, '
        '"respond": "[respond]"}. It is written before the records (to a temporary name, then renamed), '
        "and rt-lora saves the same map next to the adapter so that rt-score reads the tokens it was "
        "trained with.\n\n"
        "Text that already contains a control token string (in a prompt or an answer) is tagged as it is, "
        "and counted in a warning at the end: the model would see the token in the user's own words."
    ),
    "EXAMPLES": [
        (
            "Tag CoCoNot's refusal prompts (no labels, no responses: each gets its category's refusal text):",
            "rt-tag --label refuse coconot_eval.jsonl > refuse.jsonl",
        ),
        (
            "Tag CoCoNot's contrast preferences, answering with the compliant answer:",
            "rt-tag --label respond --response-field chosen coconot_pref.jsonl > contrast.jsonl",
        ),
        (
            "One refusal token per category, with the token map saved for rt-lora:",
            "rt-tag --mode category --token-map tokens.json --label refuse coconot_eval.jsonl > refuse.jsonl",
        ),
        (
            "Your own categories and tokens:",
            "rt-tag --mode category --categories medical,legal --map 'Medical advice=medical' \\\n"
            "    --cat-token medical='[refuse:med]' --refusal-text legal='I cannot give legal advice.' data.jsonl",
        ),
        (
            "Build a training set from a refusal split and a contrast split:",
            "{ rt-tag --label refuse refuse-train.jsonl;\n"
            "  rt-tag --label respond --response-field chosen contrast-train.jsonl; } > train.jsonl",
        ),
    ],
    "NOTES": (
        "CoCoNot's coconot_eval and coconot_contrast_eval files are evaluation data. To train on them, split "
        "them first (for example by subcategory, with a fixed seed), and never score a model on rows it was "
        "trained on."
    ),
}

HELP = """Prefix every assistant answer with its control token.

Reads training records (a `prompt` or a `messages` conversation, a `response`, a `label`
of refuse or respond, and a `category`) and writes each one back with `messages` set to
the conversation plus the assistant turn `<control token><answer>`, ready for rt-lora.
Every other field is kept, in its original key order. Records stream through one at a
time.

In single mode (the default) a refusal gets the refusal token and an answer gets the
respond token, as in the paper ([refuse] / [respond]). In category mode each refusal
category has its own refusal token ([refuse:safety], ...); the category comes from the
`category` field, with CoCoNot's long names mapped to their slugs.

A refusal row without a response gets a short refusal text for its category (see
--refusal-text); a respond row without one is an error. Counts per label and category go
to stderr at the end.
"""


SEPARATOR_HELP = (
    "What follows the control token in the assistant turn. 'none' (the default) suits a token "
    "that is a special token of the tokenizer."
)

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "control-field": "Also write the control token string into FIELD of each record (off by default).",
    "label": (
        "The label of rows that have none (written into them). CoCoNot's files have no label: "
        "coconot_eval is all refuse, coconot_contrast_eval and coconot_pref all respond."
    ),
    "map": (
        "Map a category name in the data to a slug (repeatable). CoCoNot's names are mapped "
        "already; any other name becomes its lowercase self."
    ),
    "refusal-text": (
        "The answer of a refusal row without a response: TEXT for every category, or SLUG=TEXT for "
        "one (repeatable). Built-in texts exist for the CoCoNot categories."
    ),
}
