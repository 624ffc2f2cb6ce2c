#!/usr/bin/env bash
# every command the medium run executed, in order (run from the output directory)
set -euo pipefail
rt-tag --mode single --token-map single.tokens.json -q train_contrast.jsonl > single.tagged.jsonl
rt-lora single.tagged.jsonl --token-map single.tokens.json --out single --epochs 2 --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > single.train.json
rt-score -q --model single dev.jsonl > single.dev.scored.jsonl
rt-score -q --model single test.jsonl > single.test.scored.jsonl
rt-tag --mode category --token-map category.tokens.json -q train_contrast.jsonl > category.tagged.jsonl
rt-lora category.tagged.jsonl --token-map category.tokens.json --out category --epochs 2 --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > category.train.json
rt-score -q --model category dev.jsonl > category.dev.scored.jsonl
rt-score -q --model category test.jsonl > category.test.scored.jsonl
rt-tag --mode single --token-map single_nocontrast.tokens.json -q train_nocontrast.jsonl > single_nocontrast.tagged.jsonl
rt-lora single_nocontrast.tagged.jsonl --token-map single_nocontrast.tokens.json --out single_nocontrast --epochs 2 --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > single_nocontrast.train.json
rt-score -q --model single_nocontrast dev.jsonl > single_nocontrast.dev.scored.jsonl
rt-score -q --model single_nocontrast test.jsonl > single_nocontrast.test.scored.jsonl
rt-metrics -q --plot single_metrics.png --threshold 0.5 single.test.scored.jsonl > single.test.metrics.json
rt-metrics --sweep single.test.scored.jsonl > single.test.sweep.jsonl
rt-threshold -q --fit f1 --per-category category.dev.scored.jsonl > category.thresholds.json
rt-threshold -q --fit f1 category.dev.scored.jsonl > category.global.json
rt-threshold -T category.thresholds.json category.test.scored.jsonl > category.test.percat.jsonl
rt-threshold -T category.global.json category.test.scored.jsonl > category.test.global.jsonl
# then, with --reuse (analyses redone, models and scores kept):
rt-metrics -q --plot single_metrics.png --threshold 0.5 single.test.scored.jsonl > single.test.metrics.json
rt-metrics --sweep single.test.scored.jsonl > single.test.sweep.jsonl
rt-threshold -q --fit f1 --per-category category.dev.scored.jsonl > category.thresholds.json
rt-threshold -q --fit f1 category.dev.scored.jsonl > category.global.json
rt-threshold -T category.thresholds.json category.test.scored.jsonl > category.test.percat.jsonl
rt-threshold -T category.global.json category.test.scored.jsonl > category.test.global.jsonl
