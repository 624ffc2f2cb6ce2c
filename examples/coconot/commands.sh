#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
rt-tag --mode single --token-map single.tokens.json -q train_contrast.jsonl > single.tagged.jsonl
rt-tag --mode category --token-map category.tokens.json -q train_contrast.jsonl > category.tagged.jsonl
rt-tag --mode single --token-map single_nocontrast.tokens.json -q train_nocontrast.jsonl > single_nocontrast.tagged.jsonl
rt-tag --mode single --token-map single_equal.tokens.json -q train_contrast_equal.jsonl > single_equal.tagged.jsonl
rt-lora single.tagged.jsonl --token-map single.tokens.json --out single --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > single.train.json
rt-score -q --model single dev.jsonl > single.dev.scored.jsonl
rt-score -q --model single test.jsonl > single.test.scored.jsonl
rt-lora category.tagged.jsonl --token-map category.tokens.json --out category --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > category.train.json
rt-score -q --model category dev.jsonl > category.dev.scored.jsonl
rt-score -q --model category test.jsonl > category.test.scored.jsonl
rt-lora single_nocontrast.tagged.jsonl --token-map single_nocontrast.tokens.json --out single_nocontrast --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > single_nocontrast.train.json
rt-score -q --model single_nocontrast dev.jsonl > single_nocontrast.dev.scored.jsonl
rt-score -q --model single_nocontrast test.jsonl > single_nocontrast.test.scored.jsonl
rt-lora single_equal.tagged.jsonl --token-map single_equal.tokens.json --out single_equal --max-answer-tokens 64 --eval-fraction 0 --seed 0 --overwrite -q > single_equal.train.json
rt-score -q --model single_equal dev.jsonl > single_equal.dev.scored.jsonl
rt-score -q --model single_equal test.jsonl > single_equal.test.scored.jsonl
rt-lora single.tagged.jsonl --token-map single.tokens.json --out single.seed1 --max-answer-tokens 64 --eval-fraction 0 --seed 1 --overwrite -q > single.seed1.train.json
rt-score -q --model single.seed1 dev.jsonl > single.seed1.dev.scored.jsonl
rt-score -q --model single.seed1 test.jsonl > single.seed1.test.scored.jsonl
rt-lora category.tagged.jsonl --token-map category.tokens.json --out category.seed1 --max-answer-tokens 64 --eval-fraction 0 --seed 1 --overwrite -q > category.seed1.train.json
rt-score -q --model category.seed1 dev.jsonl > category.seed1.dev.scored.jsonl
rt-score -q --model category.seed1 test.jsonl > category.seed1.test.scored.jsonl
rt-lora single_nocontrast.tagged.jsonl --token-map single_nocontrast.tokens.json --out single_nocontrast.seed1 --max-answer-tokens 64 --eval-fraction 0 --seed 1 --overwrite -q > single_nocontrast.seed1.train.json
rt-score -q --model single_nocontrast.seed1 dev.jsonl > single_nocontrast.seed1.dev.scored.jsonl
rt-score -q --model single_nocontrast.seed1 test.jsonl > single_nocontrast.seed1.test.scored.jsonl
rt-lora single_equal.tagged.jsonl --token-map single_equal.tokens.json --out single_equal.seed1 --max-answer-tokens 64 --eval-fraction 0 --seed 1 --overwrite -q > single_equal.seed1.train.json
rt-score -q --model single_equal.seed1 dev.jsonl > single_equal.seed1.dev.scored.jsonl
rt-score -q --model single_equal.seed1 test.jsonl > single_equal.seed1.test.scored.jsonl
rt-lora single.tagged.jsonl --token-map single.tokens.json --out single.seed2 --max-answer-tokens 64 --eval-fraction 0 --seed 2 --overwrite -q > single.seed2.train.json
rt-score -q --model single.seed2 dev.jsonl > single.seed2.dev.scored.jsonl
rt-score -q --model single.seed2 test.jsonl > single.seed2.test.scored.jsonl
rt-lora category.tagged.jsonl --token-map category.tokens.json --out category.seed2 --max-answer-tokens 64 --eval-fraction 0 --seed 2 --overwrite -q > category.seed2.train.json
rt-score -q --model category.seed2 dev.jsonl > category.seed2.dev.scored.jsonl
rt-score -q --model category.seed2 test.jsonl > category.seed2.test.scored.jsonl
rt-lora single_nocontrast.tagged.jsonl --token-map single_nocontrast.tokens.json --out single_nocontrast.seed2 --max-answer-tokens 64 --eval-fraction 0 --seed 2 --overwrite -q > single_nocontrast.seed2.train.json
rt-score -q --model single_nocontrast.seed2 dev.jsonl > single_nocontrast.seed2.dev.scored.jsonl
rt-score -q --model single_nocontrast.seed2 test.jsonl > single_nocontrast.seed2.test.scored.jsonl
rt-lora single_equal.tagged.jsonl --token-map single_equal.tokens.json --out single_equal.seed2 --max-answer-tokens 64 --eval-fraction 0 --seed 2 --overwrite -q > single_equal.seed2.train.json
rt-score -q --model single_equal.seed2 dev.jsonl > single_equal.seed2.dev.scored.jsonl
rt-score -q --model single_equal.seed2 test.jsonl > single_equal.seed2.test.scored.jsonl
rt-metrics -q --plot single_metrics.png --threshold 0.5 single.test.scored.jsonl > single.test.metrics.json
rt-metrics --sweep single.test.scored.jsonl > single.test.sweep.jsonl
rt-threshold -q --fit f1 --per-category category.dev.scored.jsonl > category.thresholds.json  # here: in-process, by the rtools library
rt-threshold -q --fit f1 category.dev.scored.jsonl > category.global.json  # here: in-process, by the rtools library
rt-threshold -T category.thresholds.json category.test.scored.jsonl > category.test.percat.jsonl  # here: in-process, by the rtools library
rt-threshold -T category.global.json category.test.scored.jsonl > category.test.global.jsonl  # here: in-process, by the rtools library
rt-threshold -q --fit f1 --per-category category.seed1.dev.scored.jsonl > category.seed1.thresholds.json  # here: in-process, by the rtools library
rt-threshold -q --fit f1 category.seed1.dev.scored.jsonl > category.seed1.global.json  # here: in-process, by the rtools library
rt-threshold -T category.seed1.thresholds.json category.seed1.test.scored.jsonl > category.seed1.test.percat.jsonl  # here: in-process, by the rtools library
rt-threshold -T category.seed1.global.json category.seed1.test.scored.jsonl > category.seed1.test.global.jsonl  # here: in-process, by the rtools library
rt-threshold -q --fit f1 --per-category category.seed2.dev.scored.jsonl > category.seed2.thresholds.json  # here: in-process, by the rtools library
rt-threshold -q --fit f1 category.seed2.dev.scored.jsonl > category.seed2.global.json  # here: in-process, by the rtools library
rt-threshold -T category.seed2.thresholds.json category.seed2.test.scored.jsonl > category.seed2.test.percat.jsonl  # here: in-process, by the rtools library
rt-threshold -T category.seed2.global.json category.seed2.test.scored.jsonl > category.seed2.test.global.jsonl  # here: in-process, by the rtools library
