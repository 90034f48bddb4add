#!/usr/bin/env bash
# The whole paper (`emo paper`) on a Slurm cluster: each wave of stages as a job array of N shards
# (`emo paper ... --shard I/N`), each followed by `emo merge`, then one job for the report; every job depends
# on the one before (afterok). The script submits them all, prints each step's progress, and exits non-zero
# naming the failed task and its log. Every task is resumable: run the same command again after a failure
# and it continues where it stopped. Slurm does the scheduling, retries and placement; see docs/scaling.md.
#
#   scripts/slurm/emo-paper.sh [--shards N] [--gpus-per-task G] [--partition P] [--time T] [-- EMO PAPER ARGS]
#
# The `emo` binary is $EMO, else `emo` on PATH, else this checkout's release build. The run folder is the
# paper's --out (default runs/paper); logs go to OUT/slurm/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

shards=1 gpus=0 partition="" time_limit=""
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --shards) shards="$2"; shift 2 ;;
    --gpus-per-task) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage 0 ;;
    *) echo "emo-paper.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || { echo "emo-paper.sh: --shards must be a whole number of at least 1, not \`$shards\`" >&2; exit 2; }
[[ "$gpus" =~ ^[0-9]+$ ]] || { echo "emo-paper.sh: --gpus-per-task must be a whole number, not \`$gpus\`" >&2; exit 2; }
paper_args=("$@")
quiet=(--quiet) # progress bars do not belong in a log file
for a in "${paper_args[@]}"; do
  [ "$a" = "--shard" ] && { echo "emo-paper.sh: give --shards to the script, not --shard to emo paper" >&2; exit 2; }
  [ "$a" = "--quiet" ] && quiet=()
done

EMO="${EMO:-$(command -v emo || true)}"
if [ -z "$EMO" ]; then
  EMO="$ROOT/target/release/emo"
  [ -x "$EMO" ] || (cd "$ROOT" && "$ROOT/scripts/setup.sh" && cargo build --release --quiet -p emo-cli)
fi
# The run folder: emo paper's --out, as an absolute path (jobs may start elsewhere).
out="runs/paper"
for ((i = 0; i < ${#paper_args[@]}; i++)); do
  case "${paper_args[$i]}" in
    --out) out="${paper_args[$((i + 1))]}" ;;
    --out=*) out="${paper_args[$i]#--out=}" ;;
  esac
done
mkdir -p "$out/slurm"
out="$(cd "$out" && pwd)"
logs="$out/slurm"

# A job script per step, so that arguments keep their quoting (sbatch --wrap runs /bin/sh).
quoted="$(printf '%q ' "$EMO" paper "${paper_args[@]}" "${quiet[@]}")"
step_script() { # name, command line -> path of the script
  local f="$logs/$1.sh"
  printf '#!/usr/bin/env bash\nset -euo pipefail\ncd %q\n%s\n' "$PWD" "$2" > "$f"
  chmod +x "$f"
  echo "$f"
}
submit() { # name, log file pattern, dependency (job id or empty), extra sbatch options..., script
  local name="$1" log="$2" dep="$3"; shift 3
  local opts=(--parsable --job-name "emo-$name" --output "$logs/$log")
  [ -n "$dep" ] && opts+=(--dependency "afterok:$dep" --kill-on-invalid-dep=yes)
  [ -n "$partition" ] && opts+=(--partition "$partition")
  [ -n "$time_limit" ] && opts+=(--time "$time_limit")
  sbatch "${opts[@]}" "$@" | cut -d';' -f1
}

# The waves of `emo paper` (crates/emo-cli/src/section7.rs): each wave's stages read only what earlier waves
# wrote. A wave's shards stop at its end; its merge job combines them.
waves=("elicitation" "steering and attribution" "sweeps and importance" "circuit modulation")
gpu_opts=()
[ "$gpus" -gt 0 ] && gpu_opts=(--gpus-per-task "$gpus")
steps=() ids=()
dep=""
for w in "${!waves[@]}"; do
  n=$((w + 1))
  s=$(step_script "wave$n" "$quoted --shard \"\$SLURM_ARRAY_TASK_ID/$shards\"")
  dep=$(submit "wave$n" "wave$n-%a.log" "$dep" --array "0-$((shards - 1))" "${gpu_opts[@]}" "$s")
  steps+=("wave $n (${waves[$w]}), $shards shards"); ids+=("$dep")
  s=$(step_script "merge$n" "$(printf '%q ' "$EMO" merge "$out")")
  dep=$(submit "merge$n" "merge$n.log" "$dep" "$s")
  steps+=("merge $n"); ids+=("$dep")
done
s=$(step_script "report" "$quoted")
dep=$(submit "report" "report.log" "$dep" "${gpu_opts[@]}" "$s")
steps+=("report"); ids+=("$dep")
echo "submitted ${#ids[@]} jobs (${ids[*]}); logs in $logs"

# One state per step: the worst of its tasks'.
step_state() { # job id -> PENDING | RUNNING k/n | COMPLETED | FAILED task log | GONE
  local lines
  lines=$(scontrol show job -o "$1" 2>/dev/null) || { echo GONE; return; }
  local total=0 done=0 running=0 failed=""
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    local state task
    state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$line")
    task=$(sed -n 's/.*ArrayTaskId=\([0-9-]*\).*/\1/p' <<<"$line")
    # A pending array record stands for several tasks (ArrayTaskId=1-3).
    local count=1
    [[ "$task" =~ ^([0-9]+)-([0-9]+)$ ]] && count=$((BASH_REMATCH[2] - BASH_REMATCH[1] + 1))
    total=$((total + count))
    case "$state" in
      COMPLETED) done=$((done + count)) ;;
      RUNNING|COMPLETING|CONFIGURING) running=$((running + count)) ;;
      PENDING|REQUEUED|SUSPENDED) ;;
      *) failed="task ${task:-0} ended $state, log $(sed -n 's/.*StdOut=\([^ ]*\).*/\1/p' <<<"$line")" ;;
    esac
  done <<<"$lines"
  if [ -n "$failed" ]; then echo "FAILED $failed"
  elif [ "$done" -eq "$total" ]; then echo COMPLETED
  elif [ "$running" -gt 0 ] || [ "$done" -gt 0 ]; then echo "RUNNING $done/$total done"
  else echo PENDING; fi
}

declare -A last
t0=$SECONDS
while true; do
  all_done=1
  for i in "${!ids[@]}"; do
    # Finished steps are not asked again: Slurm forgets finished jobs after a while (MinJobAge).
    [ "${last[$i]:-}" = COMPLETED ] && continue
    st=$(step_state "${ids[$i]}")
    if [ "${last[$i]:-}" != "$st" ]; then
      printf '[%4ds] %s: %s\n' $((SECONDS - t0)) "${steps[$i]}" "$st"
      last[$i]="$st"
    fi
    case "$st" in
      COMPLETED) ;;
      FAILED*|GONE)
        [ "$st" = GONE ] && st="FAILED job ${ids[$i]} left the queue without completing"
        echo "emo-paper.sh: ${steps[$i]}: ${st#FAILED }" >&2
        log=$(sed -n 's/.*, log \(.*\)$/\1/p' <<<"$st")
        [ -n "$log" ] && [ -f "$log" ] && { echo "--- last lines of $log:" >&2; tail -n 20 "$log" >&2; }
        scancel "${ids[@]}" 2>/dev/null || true
        echo "emo-paper.sh: run the same command again to continue where it stopped" >&2
        exit 1 ;;
      *) all_done=0 ;;
    esac
  done
  [ "$all_done" = 1 ] && break
  sleep 2
done
echo "paper done in $((SECONDS - t0)) s on Slurm ($shards shards); report: $out/report.md"
