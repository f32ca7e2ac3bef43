#!/usr/bin/env bash
# GPU code paths end to end, a few minutes on one GPU: train on the built-in digits on cuda (1 epoch, then
# resumed to 2), evaluate, predict, export, DDP over NCCL with torchrun (1 process), and the two-tower split
# placed twice on the one GPU, two runs with train.deterministic=true that must give the same weights (the
# pool before fc6 is not the identity at the digits' 72 px), and a JPEG store decoded on the GPU
# (data.jpeg_decode=gpu). Each step prints PASS or FAIL; the exit code is the number of failures.
#   bash scripts/gpu_smoke.sh [OUTDIR]
set -u
out=${1:-$(mktemp -d)}
mkdir -p "$out"
dev=${DEV:-cuda}  # DEV=cpu checks the script itself on a machine without a GPU
fails=0
alexnet() { python -m alexnet "$@"; }
step() {  # step NAME COMMAND...
    local name=$1; shift
    local t0=$SECONDS
    if "$@" >"$out/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"; else
        echo "FAIL $name ($((SECONDS - t0)) s), last lines:"; tail -n 15 "$out/$name.log"; fails=$((fails + 1)); fi
}
fast=(--set train.epochs=1)  # amp, channels_last and compile: auto
step train alexnet train --device "$dev" --out "$out/digits" "${fast[@]}"
step resume alexnet train --resume "$out/digits" --epochs 2
step evaluate alexnet evaluate "$out/digits" --device "$dev" --tta 10crop
python - "$out/img.png" <<'EOF'
import sys
from PIL import Image
Image.new("RGB", (64, 64), (200, 30, 30)).save(sys.argv[1])
EOF
step predict alexnet predict "$out/digits" "$out/img.png" --device "$dev"
step export alexnet export "$out/digits" --format onnx --out "$out/model.onnx"
step torchrun-nccl python -m torch.distributed.run --standalone --nproc_per_node 1 -m alexnet train \
    --device "$dev" --out "$out/ddp" --epochs 1
step towers alexnet train --device "$dev" --towers "$dev,$dev" --model alexnet --out "$out/towers" --epochs 1
det=(--device "$dev" --epochs 1 --set train.deterministic=true --set train.compile=false)
step deterministic-a alexnet train --out "$out/det-a" "${det[@]}"
step deterministic-b alexnet train --out "$out/det-b" "${det[@]}"
step deterministic-same python - "$out/det-a" "$out/det-b" <<'EOF'
import sys
import torch
a, b = (torch.load(f"{d}/checkpoints/last.pt", weights_only=True)["model"] for d in sys.argv[1:])
diff = [k for k in a if not torch.equal(a[k], b[k])]
print("identical weights" if not diff else f"weights differ: {diff}")
sys.exit(1 if diff else 0)
EOF
if [ "$dev" != cpu ]; then
    python - "$out/folder" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 40), ("val", 10)):
    for c in range(3):
        d = Path(sys.argv[1]) / split / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
EOF
    step jpeg-store alexnet prepare --data "$out/folder" --out "$out/jstore" --size 96 --format jpeg
    step jpeg-decode-gpu alexnet train --device "$dev" --data "$out/jstore" --out "$out/jgpu" --epochs 1 \
        --batch-size 16 --set data.crop=67 --set data.jpeg_decode=gpu
fi
grep -h "val top-1\|val_top1" "$out"/*.log | tail -n 5
echo "$fails failure(s); logs in $out"
exit "$fails"
