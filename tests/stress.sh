#!/usr/bin/env bash
# The suite under load: ./check N times in a row (default 5) while BURNERS CPU-bound processes
# (default 2) run beside it; stops at the first failure. Prints each run's time and result.
#
#   tests/stress.sh [RUNS] [BURNERS]      e.g. tests/stress.sh 5 2
#
# Each run's output is kept in $STRESS_LOGS (default: a fresh temporary folder) for a post-mortem.
# $STRESS_CHECK replaces ./check (e.g. STRESS_CHECK="pytest -q tests/chaos" to load-test a part).
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-5}
burners=${2:-2}
check=${STRESS_CHECK:-./check}
logs=${STRESS_LOGS:-$(mktemp -d -t comfysweep-stress.XXXXXX)}
mkdir -p "$logs"

pids=()
stop_burners() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait "${pids[@]}" 2>/dev/null
}
trap stop_burners EXIT
trap 'exit 130' INT TERM

for _ in $(seq "$burners"); do
    python3 -c 'while True: pass' &
    pids+=("$!")
done
echo "stress: $runs run(s) of $check beside $burners CPU burner(s) (pids ${pids[*]:-none}); logs in $logs"

total_start=$(date +%s)
for run in $(seq "$runs"); do
    start=$(date +%s)
    $check >"$logs/run-$run.log" 2>&1
    code=$?
    seconds=$(($(date +%s) - start))
    summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$logs/run-$run.log" | tail -1)
    if [ "$code" -eq 0 ]; then
        printf 'run %d/%d: ok in %dm%02ds  %s\n' "$run" "$runs" $((seconds / 60)) $((seconds % 60)) "$summary"
    else
        printf 'run %d/%d: FAILED (exit %d) in %dm%02ds  %s\n' "$run" "$runs" "$code" \
            $((seconds / 60)) $((seconds % 60)) "$summary"
        echo "--- last lines of $logs/run-$run.log ---"
        tail -40 "$logs/run-$run.log"
        exit 1
    fi
done
seconds=$(($(date +%s) - total_start))
printf 'stress: all %d run(s) passed in %dm%02ds\n' "$runs" $((seconds / 60)) $((seconds % 60))
