#!/usr/bin/env bash
# PEGP projection cost on an NVIDIA GPU: ViT-B/16 at 224 px (timm vit_base_patch16_224, random init), bf16
# autocast, batch 64; each PET paradigm (prompt, prefix, adapter, lora) with projection off and on, timed
# side by side in interleaved rounds. Prints the GPU, torch and CUDA versions, then a table of samples/s,
# projection overhead (% slower with projection than without) and peak GPU memory per configuration;
# writes projection_cost.csv (and the breakdown CSV, a PNG when matplotlib is installed) to --out.
# A thin wrapper around `python -m benchmarks.bench_core projection-cost`; see benchmarks/README.md.
# With more than one GPU it then runs benchmarks/bench_ranks.py on 1..N ranks (NCCL): the multi-GPU row.
#
#   benchmarks/gpu.sh [--cpu-check] [--out DIR] [extra projection-cost options, e.g. --rounds 40]
#
# Installs nothing: runs $PYTHON, else .venv/bin/python, else python3. Without a GPU it says so and exits 2,
# unless --cpu-check (or GPU_SH_CPU_CHECK=1): then the same code runs on the CPU with the tiny --quick model
# (depth 2, width 64, 32 px, batch 4, a few steps), to check the script where there is no GPU.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Whole run under 8 minutes on an H100/H200: ~30 s start-up, per paradigm two ViT-B learners built and
# consolidated (CPU eigensolvers, seconds), then timed rounds of ~0.1-0.3 s steps. The rounds are capped by
# --time-budget (split over the paradigms); `timeout` is the backstop.
WALL_LIMIT_S=480
TIME_BUDGET_S=200
PARADIGMS=prompt,prefix,adapter,lora

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

cpu_check=${GPU_SH_CPU_CHECK:-0}
out=benchmarks/out/gpu
extra=()
while (($#)); do
    case $1 in
        --cpu-check) cpu_check=1 ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --out=*) out=${1#--out=} ;;
        -h | --help) usage; exit 0 ;;
        *) extra+=("$1") ;;
    esac
    shift
done

if [[ -n ${PYTHON:-} ]]; then
    python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi

gpu_missing() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia-smi not found"
    elif ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "torch.cuda.is_available() is False for $python"
    fi
}

common=(--precision bf16 --attention sdpa --token-limits none --paradigms "$PARADIGMS" --out "$out")
reason=$(gpu_missing)
if [[ -z $reason ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'
    run=(--device cuda --model vit_base_patch16_224 --img-size 224 --batch 64 --rounds 30 --warmup 2
         --time-budget "$TIME_BUDGET_S" --threads 0)
elif [[ $cpu_check == 1 ]]; then
    echo "no GPU ($reason): --cpu-check, running the same benchmark on the CPU with the tiny --quick model"
    run=(--device cpu --quick --rounds 3 --warmup 1 --time-budget 60 --threads 1)
else
    echo "gpu.sh: no GPU ($reason); this benchmark needs an NVIDIA GPU." >&2
    echo "        --cpu-check (or GPU_SH_CPU_CHECK=1) runs the same code on the CPU with a tiny model." >&2
    exit 2
fi

"$python" - <<'EOF'
import platform

import timm
import torch

cuda = torch.cuda.is_available()
stack = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__} ({stack}), timm {timm.__version__}, "
      f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
EOF

command=("$python" -m benchmarks.bench_core projection-cost "${run[@]}" "${common[@]}" ${extra[@]+"${extra[@]}"})
echo "+ ${command[*]}"
start=$SECONDS
status=0
if command -v timeout >/dev/null 2>&1; then
    timeout --signal=INT --kill-after=20 "$WALL_LIMIT_S" "${command[@]}" || status=$?
else
    "${command[@]}" || status=$?
fi
if ((status == 124)); then
    echo "gpu.sh: stopped after ${WALL_LIMIT_S} s (the 8-minute limit); no CSV written. Fewer --rounds?" >&2
elif ((status == 0)); then
    echo "gpu.sh: finished in $((SECONDS - start)) s; table above, CSV: $out/projection_cost.csv"
fi

# With more than one GPU: the data-parallel learner on 1..N ranks (NCCL), records/s and the step split
# (benchmarks/bench_ranks.py), ViT-Tiny at 224 px, global batch 64; its own 4-minute limit.
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
if [[ -z $reason ]] && ((status == 0 && gpus > 1)); then
    ranks_command=("$python" -m benchmarks.bench_ranks --device cuda --ranks "$(seq -s, 1 "$gpus")" --batch 64
                   --steps 20 --threads 0 --out "$out")
    echo "+ ${ranks_command[*]}"
    timeout --signal=INT --kill-after=20 240 "${ranks_command[@]}" || status=$?
fi
exit "$status"
