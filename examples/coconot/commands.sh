#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
rt-metrics -q --plot single_metrics.png --threshold 0.5 single.test.scored.jsonl > single.test.metrics.json
rt-metrics --sweep single.test.scored.jsonl > single.test.sweep.jsonl
rt-threshold -q --fit f1 --per-category category.dev.scored.jsonl > category.thresholds.json
rt-threshold -q --fit f1 category.dev.scored.jsonl > category.global.json
rt-threshold -T category.thresholds.json category.test.scored.jsonl > category.test.percat.jsonl
rt-threshold -T category.global.json category.test.scored.jsonl > category.test.global.jsonl
