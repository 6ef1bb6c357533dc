#!/usr/bin/env bash
# The private study (configs/private_study.py) on one large accelerator, whose few-megabyte models leave it mostly
# idle: each digits seed and the Fashion-MNIST runs as a process of its own, sharing the device (each with a
# fraction of its memory); the public pretraining runs once (seed 0's process) and is copied to the others; then
# one table from all of them (the runs are those of the one-process command; only their order differs).
#   bash scripts/private_study_parallel.sh WORKDIR [--config.* overrides for every process]
#   CONFIG=configs/private_study.py:quick SEEDS=0 bash scripts/private_study_parallel.sh WORKDIR
# A stop signal (SIGTERM, SIGINT, SIGHUP) is passed on to every process: each saves its run and exits 3, no new
# process starts, the table is written from the runs finished so far, and the script exits 3 (run the same
# command to continue). A second signal is passed on too: the processes then exit at once (see tlgan/stopping.py).
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=$1
shift
python=${PYTHON:-python3}
config=${CONFIG:-configs/private_study.py}
seeds=${SEEDS:-0 1 2}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.15}
mkdir -p "$workdir"
study() {  # study NAME OVERRIDES...: one process (exec: its pid is the one the signals go to), log WORKDIR/NAME.log
  exec "$python" -m experiments.main --config="$config" --workdir="$workdir/$1" "${@:2}" "${extra[@]}" \
    >"$workdir/$1.log" 2>&1
}
extra=("$@")
pids=()
stop=""
forward() {  # forward SIGNAL: to every process started so far
  stop=$1
  echo "$1 received: passed on to ${#pids[@]} process(es)" >&2
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP
study fashion --config.seeds="()" & pids+=($!)
first=${seeds%% *}
study "seed$first" --config.seeds="($first,)" --config.fashion_seeds="()" & first_pid=$!
pids+=("$first_pid")
until [[ -f "$workdir/seed$first/pretrain/summary.json" || -n $stop ]]; do  # the public pretraining, once
  kill -0 "$first_pid" 2>/dev/null || { echo "error: seed $first's process ended before its pretraining" >&2; break; }
  sleep 1
done
for seed in ${seeds#"$first"}; do
  [[ -z $stop ]] || break
  if [[ -f "$workdir/seed$first/pretrain/summary.json" && ! -d "$workdir/seed$seed/pretrain" ]]; then
    mkdir -p "$workdir/seed$seed" && cp -r "$workdir/seed$first/pretrain" "$workdir/seed$seed/"
  fi
  study "seed$seed" --config.seeds="($seed,)" --config.fashion_seeds="()" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do  # a trapped signal interrupts `wait`: wait again until the process itself has ended
    wait "$pid" && rc=0 || rc=$?
    if (( rc > 128 )) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  (( rc == 0 )) || status=$rc
done
"$python" - "$workdir" $seeds <<'PY'
import os, sys
from tlgan import files
from tlgan.trainers import private_study
workdir, seeds = sys.argv[1], sys.argv[2:]
table = private_study.merge([os.path.join(workdir, f"seed{s}") for s in seeds] + [os.path.join(workdir, "fashion")])
files.atomic_write(os.path.join(workdir, "results.md"), lambda f: f.write(table), mode="w")
print(table)
PY
exit $status
