#!/usr/bin/env bash
# every command this run executed, in order
set -euo pipefail
rt-tag mix.broad.cyberseceval.jsonl --token-map model.89550a04ae7d.tokens.json -q > model.89550a04ae7d.tagged.jsonl
rt-lora model.89550a04ae7d.tagged.jsonl --token-map model.89550a04ae7d.tokens.json --out model.89550a04ae7d --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad.jailbreaks.jsonl --token-map model.417c158f81be.tokens.json -q > model.417c158f81be.tagged.jsonl
rt-lora model.417c158f81be.tagged.jsonl --token-map model.417c158f81be.tokens.json --out model.417c158f81be --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad.harmful_qa.jsonl --token-map model.12d8b2a43f51.tokens.json -q > model.12d8b2a43f51.tagged.jsonl
rt-lora model.12d8b2a43f51.tagged.jsonl --token-map model.12d8b2a43f51.tokens.json --out model.12d8b2a43f51 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad.selfaware.jsonl --token-map model.344b998e8f42.tokens.json -q > model.344b998e8f42.tagged.jsonl
rt-lora model.344b998e8f42.tagged.jsonl --token-map model.344b998e8f42.tokens.json --out model.344b998e8f42 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad.coconot.jsonl --token-map model.c345c22bd3ec.tokens.json -q > model.c345c22bd3ec.tagged.jsonl
rt-lora model.c345c22bd3ec.tagged.jsonl --token-map model.c345c22bd3ec.tokens.json --out model.c345c22bd3ec --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.mlcommons.jsonl --token-map model.97d2c0416902.tokens.json -q > model.97d2c0416902.tagged.jsonl
rt-lora model.97d2c0416902.tagged.jsonl --token-map model.97d2c0416902.tokens.json --out model.97d2c0416902 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.cyberseceval.jsonl --token-map model.eaf9ec9b14d0.tokens.json -q > model.eaf9ec9b14d0.tagged.jsonl
rt-lora model.eaf9ec9b14d0.tagged.jsonl --token-map model.eaf9ec9b14d0.tokens.json --out model.eaf9ec9b14d0 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.jailbreaks.jsonl --token-map model.442880120d11.tokens.json -q > model.442880120d11.tagged.jsonl
rt-lora model.442880120d11.tagged.jsonl --token-map model.442880120d11.tokens.json --out model.442880120d11 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.harmful_qa.jsonl --token-map model.3f240f3319bc.tokens.json -q > model.3f240f3319bc.tagged.jsonl
rt-lora model.3f240f3319bc.tagged.jsonl --token-map model.3f240f3319bc.tokens.json --out model.3f240f3319bc --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.selfaware.jsonl --token-map model.c139cd2519c4.tokens.json -q > model.c139cd2519c4.tagged.jsonl
rt-lora model.c139cd2519c4.tagged.jsonl --token-map model.c139cd2519c4.tokens.json --out model.c139cd2519c4 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-tag mix.broad+coconot.all.jsonl --token-map model.ab38cd21a0f9.tokens.json -q > model.ab38cd21a0f9.tagged.jsonl
rt-lora model.ab38cd21a0f9.tagged.jsonl --token-map model.ab38cd21a0f9.tokens.json --out model.ab38cd21a0f9 --epochs 1 --max-answer-tokens 32 --eval-fraction 0 --seed 0 --overwrite -q
rt-score model.7c4fb4708607.test.jsonl --model model.7c4fb4708607 -q > model.7c4fb4708607.scored.jsonl
rt-threshold model.7c4fb4708607.scored.jsonl > model.7c4fb4708607.decided.jsonl
rt-score model.4051d0edd0a1.test.jsonl --model model.4051d0edd0a1 -q > model.4051d0edd0a1.scored.jsonl
rt-threshold model.4051d0edd0a1.scored.jsonl > model.4051d0edd0a1.decided.jsonl
rt-score model.89550a04ae7d.test.jsonl --model model.89550a04ae7d -q > model.89550a04ae7d.scored.jsonl
rt-threshold model.89550a04ae7d.scored.jsonl > model.89550a04ae7d.decided.jsonl
rt-score model.417c158f81be.test.jsonl --model model.417c158f81be -q > model.417c158f81be.scored.jsonl
rt-threshold model.417c158f81be.scored.jsonl > model.417c158f81be.decided.jsonl
rt-score model.12d8b2a43f51.test.jsonl --model model.12d8b2a43f51 -q > model.12d8b2a43f51.scored.jsonl
rt-threshold model.12d8b2a43f51.scored.jsonl > model.12d8b2a43f51.decided.jsonl
rt-score model.344b998e8f42.test.jsonl --model model.344b998e8f42 -q > model.344b998e8f42.scored.jsonl
rt-threshold model.344b998e8f42.scored.jsonl > model.344b998e8f42.decided.jsonl
rt-score model.c345c22bd3ec.test.jsonl --model model.c345c22bd3ec -q > model.c345c22bd3ec.scored.jsonl
rt-threshold model.c345c22bd3ec.scored.jsonl > model.c345c22bd3ec.decided.jsonl
rt-score model.97d2c0416902.test.jsonl --model model.97d2c0416902 -q > model.97d2c0416902.scored.jsonl
rt-threshold model.97d2c0416902.scored.jsonl > model.97d2c0416902.decided.jsonl
rt-score model.eaf9ec9b14d0.test.jsonl --model model.eaf9ec9b14d0 -q > model.eaf9ec9b14d0.scored.jsonl
rt-threshold model.eaf9ec9b14d0.scored.jsonl > model.eaf9ec9b14d0.decided.jsonl
rt-score model.442880120d11.test.jsonl --model model.442880120d11 -q > model.442880120d11.scored.jsonl
rt-threshold model.442880120d11.scored.jsonl > model.442880120d11.decided.jsonl
rt-score model.3f240f3319bc.test.jsonl --model model.3f240f3319bc -q > model.3f240f3319bc.scored.jsonl
rt-threshold model.3f240f3319bc.scored.jsonl > model.3f240f3319bc.decided.jsonl
rt-score model.c139cd2519c4.test.jsonl --model model.c139cd2519c4 -q > model.c139cd2519c4.scored.jsonl
rt-threshold model.c139cd2519c4.scored.jsonl > model.c139cd2519c4.decided.jsonl
rt-score model.ab38cd21a0f9.test.jsonl --model model.ab38cd21a0f9 -q > model.ab38cd21a0f9.scored.jsonl
rt-threshold model.ab38cd21a0f9.scored.jsonl > model.ab38cd21a0f9.decided.jsonl
