#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
rt-tag mix.broad+coconot.all.jsonl --token-map model.267f93278385.tokens.json -q > model.267f93278385.tagged.jsonl
rt-lora model.267f93278385.tagged.jsonl --token-map model.267f93278385.tokens.json --out model.267f93278385 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-score model.838fac787d34.test.jsonl --model model.838fac787d34 -q > model.838fac787d34.scored.jsonl
rt-threshold model.838fac787d34.scored.jsonl > model.838fac787d34.decided.jsonl
rt-score model.267f93278385.test.jsonl --model model.267f93278385 -q > model.267f93278385.scored.jsonl
rt-threshold model.267f93278385.scored.jsonl > model.267f93278385.decided.jsonl
rt-generate work/answers/probe.jsonl --model work/answers/generic/model.267f93278385 --threshold 1 --max-new-tokens 32 -q
