#!/usr/bin/env bash
# GPU check of issue #5 on one H100/H200 (must finish in under 8 minutes, start-up included):
#   1. images/s and model FLOPs utilisation (MFU) of our `fit` loop against a bare open_clip-style loop,
#      ViT-B-16 at 224 px, bf16 autocast, batch 256, same batches, alternating rounds (targets: ratio >= 1.0,
#      MFU >= 45 %); then the staged schedule's frozen-stage speedup and peak memory per stage;
#   2. peak GPU memory of the training step with and without gradient checkpointing;
#   3. no host-device synchronisation in the training step between two reads of the step flags:
#      benchmarks/sync_check.py under torch.cuda.set_sync_debug_mode("error"): all towers trainable in fp32, and
#      the trunk frozen (staged unfreezing) in bf16;
#   4. a short sharded run (FSDP2 via Lightning's ModelParallelStrategy, 1 GPU) against the same run under DDP
#      (1 GPU, so both see the same distributed sampler order): time and the largest weight difference after the
#      same steps (0 on CPU in fp32; bf16 here);
#   5. 30 steps of fit in 16-mixed (fp16 + GradScaler) with gradient clipping, the paper's `--precision amp`.
# Figures are printed and written to $OUT (default runs/gpu_check). On a machine without PyPI, first run
# benchmarks/gpu_wheels.sh where pip works and bring .whl/ along.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import open_clip, jsonargparse, omegaconf" 2>/dev/null; then
    [[ -d .whl ]] || { echo "open_clip/jsonargparse/omegaconf missing and no .whl/ (benchmarks/gpu_wheels.sh)" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/sarclip_site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/sarclip_site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, lightning, open_clip; print('torch', torch.__version__, 'lightning', lightning.__version__, 'open_clip', open_clip.__version__)" | tee -a "$OUT/device.txt"
SECONDS=0

echo "== 1. throughput and MFU: ViT-B-16 @ 224, bf16, batch 256 (fit vs bare loop)"
timeout 270 "$PY" benchmarks/train_step.py --accelerator gpu --precision bf16-mixed --model ViT-B-16 \
    --batch-size 256 --steps 20 --warmup 5 --rounds 3 --stage-steps 8 --staged-rounds 2 2>&1 | grep -v -i warn | tee "$OUT/throughput.txt"

echo "== 2. peak memory with and without gradient checkpointing (${SECONDS}s so far)"
timeout 120 "$PY" benchmarks/gpu_memory.py --model ViT-B-16 --batch-size 256 --steps 3 2>&1 \
    | grep -E "grad_checkpointing|ratio" | tee "$OUT/memory.txt"

echo "== 3. no host-device sync in a training step (${SECONDS}s so far)"
for setting in "32-true" "bf16-mixed --unfreeze"; do
    read -r precision unfreeze <<< "$setting"
    if ! timeout 90 "$PY" benchmarks/sync_check.py --accelerator gpu --precision "$precision" --model ViT-B-16 \
            --batch-size 64 --every 12 ${unfreeze:+"$unfreeze"} 2>&1 | tail -n 25 | tee -a "$OUT/sync.txt"; then
        echo "sync check failed ($setting): a training step waited on the GPU (traceback above)" | tee -a "$OUT/sync.txt"
        exit 1
    fi
done

echo "== 4. short FSDP2 run vs DDP (${SECONDS}s so far)"
common=(--config experiments/quickstart.yaml --run_root "$OUT/runs" --trainer.accelerator gpu --trainer.devices 1
        --trainer.precision bf16-mixed --trainer.max_steps 40 --trainer.limit_val_batches 2
        --trainer.enable_progress_bar false --trainer.deterministic false
        --model.init_args.model_name ViT-B-16 --data.init_args.image_size 224 --data.init_args.num_train 2560
        --data.init_args.batch_size 64 --data.init_args.num_workers 8)
for strategy in ddp fsdp; do
    extra=(--trainer.strategy ddp)
    if [[ $strategy == fsdp ]]; then
        extra=(--trainer.strategy lightning.pytorch.strategies.ModelParallelStrategy
               --trainer.strategy.data_parallel_size 1 --trainer.strategy.tensor_parallel_size 1
               --trainer.strategy.save_distributed_checkpoint false)
    fi
    start=$SECONDS
    timeout 150 "$PY" -m lightning_sarclip fit "${common[@]}" --name "gpu_check_$strategy" "${extra[@]}" \
        > "$OUT/fit_$strategy.log" 2>&1 || { tail -n 30 "$OUT/fit_$strategy.log"; exit 1; }
    echo "$strategy: 40 steps of batch 64 in $((SECONDS - start)) s (start-up and data generation included)" \
        | tee -a "$OUT/fsdp.txt"
done
"$PY" - "$OUT/runs" <<'PY' | tee -a "$OUT/fsdp.txt"
import sys, torch
root = sys.argv[1]
a, b = (torch.load(f"{root}/gpu_check_{s}/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        for s in ("ddp", "fsdp"))
diff = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item() for k in a["state_dict"])
print(f"steps: ddp {a['global_step']}, fsdp {b['global_step']}; largest weight difference {diff:.2e} (bf16 run)")
PY
echo "== 5. fp16 + GradScaler + clipping, the paper's --precision amp (${SECONDS}s so far)"
# 16-mixed on a GPU: the scaler skips overflowing steps (its scale drops) and the run must finish without a
# NonFiniteLossError or Lightning's "fused optimizer ... gradient clipping" error.
timeout 120 "$PY" -m lightning_sarclip fit "${common[@]}" --name gpu_check_fp16 --trainer.strategy auto \
    --trainer.precision 16-mixed --trainer.gradient_clip_val 1.0 --trainer.max_steps 30 \
    > "$OUT/fit_fp16.log" 2>&1 || { tail -n 30 "$OUT/fit_fp16.log"; exit 1; }
echo "fp16: 30 steps with loss scaling and clipping finished" | tee "$OUT/fp16.txt"
echo "done in ${SECONDS}s; figures in $OUT"
