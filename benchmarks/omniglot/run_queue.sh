#!/usr/bin/env bash
# Train and evaluate the budgeted Omniglot runs of the README's results table, one after another.
#
#   benchmarks/omniglot/run_queue.sh benchmarks/omniglot/queue_a.jobs ~/runs
#
# Each line of the job file: NAME|CONFIG|OVERRIDES|EVALS[|EPISODES], where EVALS is a ';'-separated list of
# WAYS,SHOTS settings evaluated on EPISODES (default 1,000) fixed test episodes (seed 0, 15 queries per class) with
# `metakit eval --json` into OUT/NAME.eval.<W>w<S>s.json. A run folder OUT/NAME that already has
# checkpoints is resumed (`metakit train --resume`), a finished one is skipped unless the job line's
# train.steps asks for more (it is then resumed to that budget), and a resumed run is evaluated
# anew; an existing evaluation is otherwise kept: run the same command again after a crash or a new session. Run from the
# checkout (configs name ../shared/data/omniglot). Two queues in parallel, one thread each, is
# how the README's rows were made on a 2-core machine.
set -u
jobs=$(realpath "$1"); out=${2:-runs}; mkdir -p "$out"; out=$(realpath "$out")
mk=${METAKIT:-metakit}
while IFS='|' read -r name cfg ovr evals episodes; do
  [ -z "$name" ] && continue; [[ "$name" == \#* ]] && continue
  d=$out/$name
  # a job line's train.steps also holds on resume (so a budget can be cut or extended)
  steps=$(grep -o 'train\.steps=[0-9]*' <<< "$ovr" || true)
  done_steps=$(grep -so '"steps": [0-9]*' "$d/summary.json" | head -1 | grep -o '[0-9]*$' || true)
  if grep -qs '"status": "finished"' "$d/summary.json" && { [ -z "$steps" ] || [ "${steps#*=}" -le "${done_steps:-0}" ]; }; then :
  elif [ -d "$d/checkpoints" ]; then
    echo "$(date +%T) resume $name" >> "$out/queue.log"
    # more training makes any earlier evaluation (of an interrupted or shorter run) stale
    rm -f "$out/$name".eval.*.json
    # shellcheck disable=SC2086
    $mk train --resume "$d" run.progress=false $steps >> "$out/$name.log" 2>&1
  else
    echo "$(date +%T) start $name" >> "$out/queue.log"
    # shellcheck disable=SC2086
    $mk train "$cfg" $ovr run.progress=false run.num_threads=1 --out "$d" >> "$out/$name.log" 2>&1
  fi
  echo "$(date +%T) trained $name rc=$?" >> "$out/queue.log"
  IFS=';' read -ra settings <<< "$evals"
  for e in "${settings[@]}"; do
    w=${e%,*}; s=${e#*,}; res=$out/$name.eval.${w}w${s}s.json
    [ -s "$res" ] && continue
    OMP_NUM_THREADS=1 $mk eval "$d" --ways "$w" --shots "$s" --queries 15 --episodes "${episodes:-1000}" --seed 0 --json \
      > "$res.tmp" 2>> "$out/$name.log" && mv "$res.tmp" "$res"
    echo "$(date +%T) eval $name ${w}w${s}s done" >> "$out/queue.log"
  done
done < "$jobs"
