#!/usr/bin/env bash
# One call of the workplace's device tool (a lent CUDA GPU), prepared so that a short loan is not
# spent on mistakes. It runs in the repository root there, with the machine's own python3/torch.
#
#   here, once:  mkdir -p .gpu && cp -r ../shared/data/mnist .gpu/ && echo /.gpu/ >> .git/info/exclude
#   device tool: run(command="bash bench/gpu_session.sh SECONDS [gpu_budget_run.py arguments]",
#                    carry=[".gpu"], timeout_s=SECONDS + 60)
#   e.g.         GPU_TESTS=graphs bash bench/gpu_session.sh 280 --resume-copy runs/iwae-2layer
#                bash bench/gpu_session.sh 420 --config bench/recipes/iwae-2layer-gpu.toml
#
# 1. The CUDA tests (tests/test_cuda_graphs.py decides --cuda-graphs: all four must pass, else
#    training launches operator by operator), 2. bench/gpu_budget_run.py with what is left of
#    SECONDS, writing the run to $OUT/run. --resume-copy DIR copies a run (e.g. a checkpoint
#    trained on the CPU) to $OUT/run and continues it there. At most 8 files come back from $OUT:
#    tests.log, train.log and the run's six (config, weights, checkpoint, metrics, NLL, summary).
set -uo pipefail
total=${1:?usage: gpu_session.sh SECONDS [--resume-copy DIR | --config RECIPE] [more gpu_budget_run.py args]}
shift
out=${OUT:?OUT is set by the device tool}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], 'cuda', torch.cuda.is_available())"

# GPU_TESTS=graphs runs only the four graph tests (~15 s) when the loan is very short
tests=(tests/test_cuda_graphs.py tests/test_cuda.py)
[ "${GPU_TESTS:-all}" = graphs ] && tests=(tests/test_cuda_graphs.py)
timeout 150 python3 -m pytest -q -rA -n 2 --dist loadfile -p no:cacheprovider "${tests[@]}" > "$out/tests.log" 2>&1
echo "tests exit $?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -25
graphs=on
[ "$(grep -c '^PASSED tests/test_cuda_graphs.py' "$out/tests.log")" -ge 4 ] || graphs=off
echo "--cuda-graphs $graphs"

args=()
if [ "${1:-}" = "--resume-copy" ]; then
    cp -r "$2" "$out/run" && rm -f "$out/run"/nll-*.json "$out/run"/budget_run.json
    shift 2
    args=(--resume "$out/run")
else
    args=(--out "$out/run")
fi
left=$(( total - SECONDS - 15 ))
python3 bench/gpu_budget_run.py "${args[@]}" "$@" --data-dir .gpu/mnist --budget "$left" --cuda-graphs "$graphs" \
    > "$out/train.log" 2>&1
echo "train exit $?"; tail -c 4000 "$out/train.log"
