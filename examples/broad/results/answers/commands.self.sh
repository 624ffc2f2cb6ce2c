#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
rt-generate self_answers.todo.jsonl --model embedded --plain --max-new-tokens 32 -q > self_answers.new.jsonl
rt-tag mix.broad+coconot.mlcommons.jsonl --token-map model.86c322b0aa72.tokens.json -q > model.86c322b0aa72.tagged.jsonl
rt-lora model.86c322b0aa72.tagged.jsonl --token-map model.86c322b0aa72.tokens.json --out model.86c322b0aa72 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-generate self_answers.todo.jsonl --model embedded --plain --max-new-tokens 32 -q > self_answers.new.jsonl
rt-tag mix.broad+coconot.all.jsonl --token-map model.7231eefc5874.tokens.json -q > model.7231eefc5874.tagged.jsonl
rt-lora model.7231eefc5874.tagged.jsonl --token-map model.7231eefc5874.tokens.json --out model.7231eefc5874 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-score model.86c322b0aa72.test.jsonl --model model.86c322b0aa72 -q > model.86c322b0aa72.scored.jsonl
rt-threshold model.86c322b0aa72.scored.jsonl > model.86c322b0aa72.decided.jsonl
rt-score model.7231eefc5874.test.jsonl --model model.7231eefc5874 -q > model.7231eefc5874.scored.jsonl
rt-threshold model.7231eefc5874.scored.jsonl > model.7231eefc5874.decided.jsonl
rt-generate work/answers/probe.jsonl --model work/answers/self/model.7231eefc5874 --threshold 1 --max-new-tokens 32 -q
