#!/bin/bash
# GPU measurements behind docs/benchmarks.md "Paper scale on one GPU": run from the repository root
# on a CUDA machine (PyTorch, timm, Lightning installed; vpnext from ./src). Writes JSON and logs
# into $OUT (default runs/device). Each step has its own time limit so one slow step cannot take
# the others' results with it.
#
#   OUT=runs/device bash scripts/device/paper_scale.sh
#
# 1. the deformable 3x3 conv on CUDA: every implementation against torchvision's, at HiCLR's
#    paper-width shapes for ViT-L/16 480x480 (1/4: 120x120, 1/16: 30x30, width 1024 and 256);
# 2. `vpnext benchmark` at the paper's Pascal Context config (experiments/vitup.yaml: ViT-L/16,
#    480x480, 59 classes, paper-width decoder, VCR-2, HiCLR-3, mask loss), inference batch 1 and a
#    training step of batch 2 (the paper's 16 images over 8 GPUs), fp32 and bf16 autocast;
# 3. the same in bf16 under torch.compile.
set -u
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"

PAPER=(--config experiments/vitup.yaml --image-size 480 480 --batch-size 1 --train-batch-size 2
  --model.pretrained=false --model.img_size=480 --repeats 10 --warmup 3)
BENCH=(python3 -c "import sys; from vpnext.cli import main; sys.exit(main())" benchmark)

timeout 90 python3 scripts/bench_deform_conv.py --device cuda --repeats 10 --warmup 2 \
  --shapes 2,1024,120,120 2,1024,30,30 2,256,120,120 --json "$OUT/deform_cuda.json" 2>&1 | tee "$OUT/deform_cuda.log"
timeout 120 "${BENCH[@]}" "${PAPER[@]}" --json "$OUT/paper_fp32.json" 2>&1 | tee "$OUT/paper_fp32.log"
timeout 120 "${BENCH[@]}" "${PAPER[@]}" --bf16 --json "$OUT/paper_bf16.json" 2>&1 | tee "$OUT/paper_bf16.log"
timeout 240 "${BENCH[@]}" "${PAPER[@]}" --bf16 --compile --json "$OUT/paper_bf16_compile.json" 2>&1 \
  | tee "$OUT/paper_bf16_compile.log"
