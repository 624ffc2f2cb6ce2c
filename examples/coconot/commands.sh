#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
# reused: rt-tag --mode single --token-map /work/main/work/coconot-medium/single.tokens.json -q /work/main/work/coconot-medium/train_contrast.jsonl
# reused: rt-lora /work/main/work/coconot-medium/single.tagged.jsonl --token-map /work/main/work/coconot-medium/single.tokens.json --out /work/main/work/coconot-medium/single --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q
# reused: rt-score -q --model /work/main/work/coconot-medium/single /work/main/work/coconot-medium/dev.jsonl
# reused: rt-score -q --model /work/main/work/coconot-medium/single /work/main/work/coconot-medium/test.jsonl
# reused: rt-tag --mode category --token-map /work/main/work/coconot-medium/category.tokens.json -q /work/main/work/coconot-medium/train_contrast.jsonl
# reused: rt-lora /work/main/work/coconot-medium/category.tagged.jsonl --token-map /work/main/work/coconot-medium/category.tokens.json --out /work/main/work/coconot-medium/category --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q
# reused: rt-score -q --model /work/main/work/coconot-medium/category /work/main/work/coconot-medium/dev.jsonl
# reused: rt-score -q --model /work/main/work/coconot-medium/category /work/main/work/coconot-medium/test.jsonl
# reused: rt-tag --mode single --token-map /work/main/work/coconot-medium/single_nocontrast.tokens.json -q /work/main/work/coconot-medium/train_nocontrast.jsonl
# reused: rt-lora /work/main/work/coconot-medium/single_nocontrast.tagged.jsonl --token-map /work/main/work/coconot-medium/single_nocontrast.tokens.json --out /work/main/work/coconot-medium/single_nocontrast --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q
# reused: rt-score -q --model /work/main/work/coconot-medium/single_nocontrast /work/main/work/coconot-medium/dev.jsonl
# reused: rt-score -q --model /work/main/work/coconot-medium/single_nocontrast /work/main/work/coconot-medium/test.jsonl
rt-metrics -q --plot single_metrics.png --threshold 0.5 single.test.scored.jsonl > single.test.metrics.json
rt-metrics --sweep single.test.scored.jsonl > single.test.sweep.jsonl
rt-threshold -q --fit f1 --per-category category.dev.scored.jsonl > category.thresholds.json
rt-threshold -q --fit f1 category.dev.scored.jsonl > category.global.json
rt-threshold -T category.thresholds.json category.test.scored.jsonl > category.test.percat.jsonl
rt-threshold -T category.global.json category.test.scored.jsonl > category.test.global.jsonl
