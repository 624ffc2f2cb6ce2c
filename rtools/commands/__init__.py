"""The click commands, one module each. Modules import nothing heavy at import time."""

#: command name -> module (under rtools.commands); each module defines ``command`` and ``MAN``.
COMMANDS = {
    "rt-tag": "tag",
    "rt-lora": "lora",
    "rt-score": "score",
    "rt-threshold": "threshold",
    "rt-metrics": "metrics",
    "rt-generate": "generate",
    "rt-split": "split",
}
