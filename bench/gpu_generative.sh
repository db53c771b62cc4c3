#!/usr/bin/env bash
# Generative regularisers (VAE and GAN priors) on dival's ellipses standard, one GPU command of about 9 minutes:
# the VAE and the GAN prior trained at once on ellipses-30 images (TRAIN_TIME each, sharing the GPU),
# then bench/generative_priors.py --preset ellipses-30 for each geometry in parallel (FBP, TV, range and
# soft of both priors at 30 angles, 10 angles and 60° limited angle, the SAME generators everywhere)
# on the first 100 test samples; μ, λ, TV's α and FBP's filter tuned on validation samples.
# Logs and tables land in $OUT:
#
#   source .device/setup.sh && OUT=outputs/gpu_generative bash bench/gpu_generative.sh        # the H200
#   ACCEL=cpu TRAIN_TIME=00:00:00:20 BENCH_ARGS="--iterations 2 --restarts 1 --tune-samples 1 --tv-iterations 2 \
#       --tv-alphas 1 --tv-tune-samples 1 --fbp-tune-samples 2 --test-samples 2" \
#       bash bench/gpu_generative.sh                                                           # a CPU dry run
set -uo pipefail
OUT=${OUT:-outputs/gpu_generative}
ACCEL=${ACCEL:-gpu}
TRAIN_TIME=${TRAIN_TIME:-00:00:04:00}
BENCH_ARGS=${BENCH_ARGS:-}
EXTRA=${EXTRA:-}                 # extra train.py flags of the prior trainings
RUNS=${RUNS:-outputs/gpu_generative_runs}   # the priors' logs and checkpoints
export WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/session.log") 2>&1
stamp() { echo "=== $(date +%T) $*"; }

stamp "machine"; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; nproc
stamp "VAE and GAN priors at once, $TRAIN_TIME each"
pids=()
for prior in vae gan; do
    flags=(--trainer.accelerator="$ACCEL" --trainer.max_time="$TRAIN_TIME" --trainer.enable_progress_bar=false
           --trainer.default_root_dir="$RUNS/$prior" --trainer.logger.init_args.save_dir="$RUNS/$prior"
           --checkpoint.dirpath="$RUNS/$prior/checkpoints" --model.init_args.results_dir="$RUNS/$prior/results")
    [ "$ACCEL" = cpu ] && flags+=(--data.init_args.simulate_on=cpu --data.init_args.num_workers=0
                                  --data.init_args.val_length=2 --trainer.limit_val_batches=1)
    python train.py fit --config configs/experiment/ellipses30_${prior}_prior.yaml "${flags[@]}" $EXTRA \
        > "$OUT/fit_$prior.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for prior in vae gan; do stamp "fit $prior"; grep -E "Error|Traceback|Time limit|val/" "$OUT/fit_$prior.log" | tail -4; done

stamp "range and soft next to FBP and TV, one process per geometry"
pids=()
for geometry in 30angles 10angles limited60; do
    python bench/generative_priors.py --preset ellipses-30 --geometries "$geometry" $BENCH_ARGS \
        --vae "$RUNS/vae/checkpoints/last.ckpt" --gan "$RUNS/gan/checkpoints/last.ckpt" \
        --results-root "$RUNS/results" \
        --out "$OUT/generative_$geometry.json" > "$OUT/bench_$geometry.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for geometry in 30angles 10angles limited60; do stamp "$geometry"; tail -12 "$OUT/bench_$geometry.log"; done
for geometry in 30angles 10angles limited60; do cp "$RUNS/results/$geometry/results.md" "$OUT/results_$geometry.md" 2>/dev/null; done
stamp "done"
