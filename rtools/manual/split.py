"""rt-split(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

HELP = """Cut one record file into train, dev and test parts, stratified and reproducible.

Reads records (any JSON objects) and assigns each one to a part: by default 70% train,
15% dev and 15% test. With --stratify, each stratum (the records that share the values
of the named fields, such as label and category) is cut by the ratios on its own, so every
part has the strata in the same proportions. The same input, ratios and --seed give the
same parts, on any machine.

With --out-dir DIR the parts are written to DIR/NAME.jsonl (DIR/train.jsonl, DIR/dev.jsonl,
DIR/test.jsonl), each record exactly as it was read, in input order; without it every record
goes to stdout with its part's name in the field `split` (--field). It reads the whole
input before writing (the strata need every record).
"""

OPTION_HELP = {
    "ratios": (
        "The parts' sizes, two or more positive numbers (normalised by their sum: 70,15,15 and "
        "0.7,0.15,0.15 are the same)."
    ),
    "names": (
        "The parts' names, one per ratio (letters, digits, _ . -), also their file names under "
        "--out-dir. [default: train,dev,test for three ratios, train,test for two]"
    ),
    "stratify": (
        "Cut each stratum of these fields (comma-separated, e.g. label,category) by the ratios on its "
        "own. A missing field counts as null. [default: no strata: the whole input is one]"
    ),
    "seed": "The shuffle's seed: another seed, another (equally stratified) split.",
    "out-dir": (
        "Write each part to DIR/NAME.jsonl (DIR is made if needed; an existing part file is replaced, "
        "an input file never is) instead of writing the records to stdout."
    ),
    "field": "Without --out-dir: the field that gets each record's part name.",
}

MAN = {
    "FIELDS READ": (
        "The --stratify fields, if any, whatever their JSON type (strings, numbers, null, ...). Nothing else "
        "is read: records need no particular field."
    ),
    "FIELDS WRITTEN": (
        "split: without --out-dir, the name of the record's part (another field with --field); an "
        "existing field of that name is replaced in place, every other field kept in its order. With "
        "--out-dir nothing is added: each part file holds the input lines of its records, byte for byte."
    ),
    "HOW THE PARTS ARE CUT": (
        "Records are grouped into strata by their --stratify values. Each stratum is shuffled by a random "
        "generator seeded with --seed and the stratum's values (so one stratum's split does not depend on "
        "the others), then cut in the order of --names: each part gets the whole part of its share "
        "(stratum size x ratio / sum of ratios), and the records left over go to the parts with the "
        "largest remainders, the earlier part on a tie. A stratum of 6 records cut 85,15 gives 5 and 1; "
        "one of 2 records cut 70,15,15 gives 2, 0 and 0. A part left empty is named in a warning. A "
        "summary (records, strata, the size of each part) goes to stderr unless -q.\n\n"
        "Rows that repeat one another (the same prompt twice) can land in different parts: remove "
        "duplicates first if that matters."
    ),
    "EXAMPLES": [
        (
            "Train, dev and test files from one labelled file, each label and category in the same proportions:",
            "rt-split data.jsonl --ratios 70,15,15 --stratify label,category --seed 0 --out-dir splits/",
        ),
        (
            "A dev part split off a training file (85% stays train):",
            "rt-split train.jsonl --ratios 85,15 --names train,dev --stratify label,category --out-dir parts/",
        ),
        (
            "Every record tagged with its part in a field of its own, to stdout:",
            "rt-split data.jsonl --ratios 80,20 --names fit,holdout --field fold > folds.jsonl",
        ),
    ],
}
