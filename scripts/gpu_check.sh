#!/usr/bin/env bash
# The GPU checks and measurements in one run, at most 5 minutes on one H100/H200, writing its log to
# OUTDIR/gpu-check-DEVICE.log (default OUTDIR: benchmarks/results). It needs only what the package needs, already
# installed (torch with CUDA, torchvision, numpy, pillow, pyyaml, tqdm, scikit-learn, safetensors, protobuf,
# tensorboard, matplotlib): no pip, no datasets (it makes its own), the package from this checkout's src/.
#   1. the commands on the GPU: train on the built-in digits (1 epoch, resumed to 2; 1 epoch in fp16 with the
#      loss scaler, not in a dry run), evaluate with 10 crops, predict, export to ONNX, DDP over NCCL with torchrun
#      (1 process), the two-tower split placed twice on the one GPU;
#   2. benchmarks/gpu_check.py: training steps of the three networks (eager and compiled), the GPU LRN, store ->
#      GPU epochs (raw, JPEG decoded on the CPU and on the GPU), host overhead and host-device syncs on the
#      device, train.deterministic bit for bit and a resume against the uninterrupted run, evaluate's images/s.
# Each step prints PASS or FAIL; the exit code is the number of failures.
#   bash scripts/gpu_check.sh [--dry-run] [OUTDIR]
# --dry-run: every step at toy size on the CPU (the test suite runs it, so the script cannot rot).
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi
out=${1:-$root/benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ "$dry" = 1 ]; then dev=cpu; tag=dry-run; else
    dev=cuda
    tag=$("$py" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())" 2>/dev/null || echo gpu)
fi
log="$out/gpu-check-$tag.log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
alexnet() { "$py" -m alexnet "$@"; }
step() {  # step NAME COMMAND...
    local name=$1; shift
    local t0=$SECONDS
    if "$@" >"$work/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"; else
        echo "FAIL $name ($((SECONDS - t0)) s), last lines:"; tail -n 15 "$work/$name.log"; fails=$((fails + 1)); fi
}
{
    echo "gpu_check: device $dev, $("$py" -c 'import sys, torch; print(f"torch {torch.__version__}, Python {sys.version.split()[0]}")')"
    small=()
    [ "$dry" = 1 ] && small=(--set train.max_steps=3 --set data.val_fraction=0.05)  # 90 validation digits
    step train alexnet train --device "$dev" --out "$work/digits" --epochs 1 "${small[@]}"
    step resume alexnet train --resume "$work/digits" --epochs 2
    # fp16 with the loss scaler, auto on V100/T4 (CPUs refuse it): on the GPU only
    [ "$dry" = 1 ] || step fp16 alexnet train --device "$dev" --out "$work/fp16" --epochs 1 --set train.amp=fp16
    step evaluate alexnet evaluate "$work/digits" --device "$dev" --tta 10crop
    "$py" -c "from PIL import Image; Image.new('RGB', (64, 64), (200, 30, 30)).save('$work/img.png')"
    step predict alexnet predict "$work/digits" "$work/img.png" --device "$dev"
    step export alexnet export "$work/digits" --format onnx --out "$work/model.onnx"
    step torchrun "$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m alexnet train \
        --device "$dev" --out "$work/ddp" --epochs 1 "${small[@]}"
    step towers alexnet train --device "$dev" --towers "$dev,$dev" --model alexnet --out "$work/towers" --epochs 1 \
        "${small[@]}"
    check=(--device "$dev")
    [ "$dry" = 1 ] && check=(--dry-run)
    if "$py" "$root/benchmarks/gpu_check.py" "${check[@]}"; then :; else fails=$((fails + $?)); fi
    echo "$fails failure(s); log $log"
    exit "$fails"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
