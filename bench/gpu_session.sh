#!/usr/bin/env bash
# Every GPU measurement on dival's ellipses standard in one command of about 9 minutes on one H200:
# the gpu tests, bench/train_speed.py (old vs new path, data included), the three supervised methods
# and the conditional WGAN trained at once on the GPU (each for TRAIN_TIME; alone each fits its own
# 9-minute config), their tests on the first 100 test samples, TV (α tuned on validation) and the
# cWGAN's calibration. Logs and tables land in $OUT (at most 8 files):
#
#   source .device/setup.sh && OUT=outputs/gpu_session bash bench/gpu_session.sh      # the H200
#   source .device/setup.sh && MODELS=learned_pd TRAIN_TIME=00:00:06:00 SPEED=0 BASELINES=0 bash bench/gpu_session.sh
#                                                  # one headline run alone (what the next GPU session should run)
#   source .device/setup.sh && MODELS= SPEED=0 BASELINES=0 SLICES=1 bash bench/gpu_session.sh
#                                                  # the DIP speed measurements alone: DIP it/s (1 vs 25/100 per step) and 64 slices, ≈ 4 min
#   source .device/setup.sh && MODELS= SPEED=0 DIP_SPEED=0 BASELINES=0 GPU_TESTS=0 SELF_SUPERVISED=1 bash bench/gpu_session.sh
#                                                  # Noise2Inverse on low-dose ellipses (not run yet, time unmeasured): can a wider U-Net on 4,096
#                                                  # samples clear FBP + 3 dB, supervised first, then Noise2Inverse?
#   ACCEL=cpu TRAIN_TIME=00:00:00:20 SPEED_ARGS="--device cpu --steps 1 --warmup 1 --batch-size 2 --workers 1 --models LearnedGD" \
#       TV_ARGS="--device cpu --iterations 5 --val-samples 2 --test-samples 2 --alphas 1 4" \
#       CWGAN_SAMPLES=4 TEST_SAMPLES=4 DIP_ITERATIONS=5 DIP_TEST_IMAGES=1 bash bench/gpu_session.sh                          # a CPU dry run
set -uo pipefail
OUT=${OUT:-outputs/gpu_session}
ACCEL=${ACCEL:-gpu}
TRAIN_TIME=${TRAIN_TIME:-00:00:03:30}
SPEED_ARGS=${SPEED_ARGS:---device cuda --steps 100 --warmup 40 --workers 12 --profile}
TV_ARGS=${TV_ARGS:---device cuda --iterations 1000 --val-samples 20 --test-samples 100 --alphas 0.5 1 2 4 8 16 32}
CWGAN_SAMPLES=${CWGAN_SAMPLES:-100}
TEST_SAMPLES=${TEST_SAMPLES:-100}
DIP_ITERATIONS=${DIP_ITERATIONS:-2000}
DIP_TEST_IMAGES=${DIP_TEST_IMAGES:-4}
RUNS=${RUNS:-outputs/gpu_session_runs}
MODELS=${MODELS-learned_pd learned_gd fbp_unet cwgan}   # trained at once, sharing the GPU
BASELINES=${BASELINES:-1}                                # TV and DIP+TV beside the trainings (0: skip)
SPEED=${SPEED:-1}                                        # bench/train_speed.py first (0: skip)
DIP_SPEED=${DIP_SPEED:-1}                                # bench/dip_speed.py: DIP it/s, 1 vs 25/100 per step (0: skip)
DIP_SPEED_ARGS=${DIP_SPEED_ARGS:---accelerator gpu --iterations 1500 --per-step 1 25 100}
SLICES=${SLICES:-0}                                      # bench/finetune_slices.py: 64 warm vs independent slices (1: run)
SLICES_ARGS=${SLICES_ARGS:---slices 64 --size 64 --angles 90 --num-angles 30 --iterations 600 --warm-iterations 150 --channels 32 --accelerator gpu}
SELF_SUPERVISED=${SELF_SUPERVISED:-0}                    # bench/self_supervised.py: a wider U-Net, more samples (1: run)
SELF_SUPERVISED_ARGS=${SELF_SUPERVISED_ARGS:---device cuda --threads 0 --channels 32 32 64 64 128 --train-length 4096 --batch-size 32 --steps 3000 --methods fbp supervised noise2inverse}
export WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/session.log") 2>&1
stamp() { echo "=== $(date +%T) $*"; }

stamp "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
GPU_TESTS=${GPU_TESTS:-1}                                # the gpu-marked tests first (0: skip)
if [ "$ACCEL" = gpu ] && [ "$GPU_TESTS" = 1 ]; then
    stamp "gpu tests (at most 150 s)"; timeout 150 python -m pytest -q -m gpu -p no:cacheprovider --tb=short 2>&1 | grep -v "Warning\|warn" | tail -40
fi

if [ "$SPEED" = 1 ]; then
    stamp "training speed, old vs new path"
    python bench/train_speed.py --paths --threads 0 $SPEED_ARGS --json "$OUT/train_speed.json" 2>&1 | grep -v Warning
    stamp "training step variants: fp32, channels_last, bf16, compile, all (model alone, batch 32)"
    timeout 240 python bench/train_speed.py --device cuda --threads 0 --batch-size 32 --steps 20 --rounds 3 --warmup 5 \
        --out "$OUT/train_speed_variants.json" 2>&1 | grep -v Warning
fi

if [ "$DIP_SPEED" = 1 ]; then
    stamp "DIP iterations per second, one vs several per Lightning step"
    python bench/dip_speed.py $DIP_SPEED_ARGS --json "$OUT/dip_speed.json" 2>&1 | grep -v "Warning\|warn\|max_steps"
fi

if [ "$SLICES" = 1 ]; then
    stamp "whole scan: 64 slices warm-started against independent"
    python bench/finetune_slices.py $SLICES_ARGS --json "$OUT/finetune_slices.json" 2>&1 | grep -v "Warning\|warn" | tail -25
fi

if [ "$SELF_SUPERVISED" = 1 ]; then
    stamp "low-dose ellipses-small (100 photons): FBP, supervised and Noise2Inverse with a wider U-Net"
    python bench/self_supervised.py $SELF_SUPERVISED_ARGS --json "$OUT/self_supervised.json" \
        --out "$RUNS/self_supervised" 2>&1 | grep -v "Warning\|warn" | tail -12
fi

n_runs=$(echo $MODELS | wc -w)
[ "$n_runs" = 0 ] && { stamp "done (no trainings)"; exit 0; }
stamp "training: $MODELS at once ($TRAIN_TIME each)"
common=(--config configs/logger/csv.yaml --trainer.accelerator="$ACCEL" --trainer.max_time="$TRAIN_TIME"
        --trainer.enable_progress_bar=false --trainer.logger.init_args.save_dir="$RUNS/logs"
        --model.init_args.results_dir="$RUNS/results")
[ "$ACCEL" = cpu ] && common+=(--trainer.precision=32-true --data.init_args.test_length="$TEST_SAMPLES")
pids=()  # a bare `wait` would also wait for the log's tee
declare -A label=([learned_pd]="learned PD" [learned_gd]="learned GD" [fbp_unet]="FBP + U-Net" [cwgan]="cWGAN")
for m in $MODELS; do
    python train.py fit --config configs/experiment/h200_9min_$m.yaml "${common[@]}" \
        --model.init_args.method_name="${label[$m]} ($ACCEL, $TRAIN_TIME, $n_runs run(s) sharing it)" \
        --trainer.default_root_dir="$RUNS/$m" --checkpoint.dirpath="$RUNS/$m/checkpoints" > "$RUNS/fit_$m.log" 2>&1 &
    pids+=($!)
done
if [ "$BASELINES" = 1 ]; then
python bench/tv_ellipses.py $TV_ARGS --json "$OUT/tv_ellipses.json" > "$RUNS/tv.log" 2>&1 &
pids+=($!)
# DIP+TV: γ chosen on two validation images; one process per image (each runs every γ)
for i in 0 1; do
    python bench/dip_ellipses.py --split val --images "$i" --iterations "$DIP_ITERATIONS" --accelerator "$ACCEL" \
        --json "$RUNS/dip_val$i.json" > "$RUNS/dip_val$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 0 $((DIP_TEST_IMAGES - 1))); do
    python bench/dip_ellipses.py --split test --images "$i" --iterations "$DIP_ITERATIONS" --accelerator "$ACCEL" \
        --json "$RUNS/dip_test$i.json" > "$RUNS/dip_test$i.log" 2>&1 &
    pids+=($!)
done
fi
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for m in $MODELS; do stamp "fit $m"; grep -E "Error|Traceback|Time limit|max_steps" "$RUNS/fit_$m.log" | tail -5; done
if [ "$BASELINES" = 1 ]; then
    stamp "TV"; tail -12 "$RUNS/tv.log"
    stamp "DIP+TV"; python bench/dip_ellipses.py --merge "$RUNS"/dip_*.json --json "$OUT/dip_ellipses.json"
fi

stamp "tests on the first $TEST_SAMPLES test samples"
pids=()
for m in $MODELS; do
    [ "$m" = cwgan ] && continue
    python train.py test --config configs/experiment/h200_9min_$m.yaml "${common[@]}" --trainer.logger=false \
        --model.init_args.method_name="${label[$m]} ($ACCEL, $TRAIN_TIME, $n_runs run(s) sharing it)" \
        --ckpt_path "$RUNS/$m/checkpoints/last.ckpt" > "$RUNS/test_$m.log" 2>&1 &
    pids+=($!)
done
if [[ " $MODELS " == *" cwgan "* ]]; then
    python bench/cwgan_test.py "$RUNS/cwgan/checkpoints/last.ckpt" --samples "$CWGAN_SAMPLES" \
        --test-samples "$TEST_SAMPLES" --json "$OUT/cwgan_test.json" > "$RUNS/cwgan_test.log" 2>&1 &
    pids+=($!)
fi
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for m in $MODELS; do [ -f "$RUNS/test_$m.log" ] && grep -E "Error|test/psnr" "$RUNS/test_$m.log" | tail -3; done
[ -f "$RUNS/cwgan_test.log" ] && tail -4 "$RUNS/cwgan_test.log"
cp "$RUNS/results/results.md" "$OUT/results.md" 2>/dev/null; cat "$OUT/results.md" 2>/dev/null
tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' -C "$RUNS" . 2>/dev/null
stamp "done"
