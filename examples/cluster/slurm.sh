#!/bin/bash
# FGSM sweep over an ImageNet-style dataset as a Slurm job array: 8 tasks, one
# GPU each, every task a worker of the same sharded run. advex reads its share
# from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (the array must start at 0
# with step 1). A task that is preempted or requeued reruns the same command
# and skips the shards already committed; the last task to finish writes
# $OUT/report.json and $OUT/predictions.csv (or run `advex merge $OUT`).
#
#   sbatch examples/cluster/slurm.sh
#
#SBATCH --job-name=advex-fgsm
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=advex-%A_%a.log
set -euo pipefail

# advex expands the brace pattern itself: keep it quoted
IMAGES='/datasets/imagenet/val-wds/imagenet-val-{000000..000049}.tar'
OUT=/scratch/$USER/advex-fgsm-val

# --require-gpu: a node whose Vulkan driver is missing fails at once (exit 1)
# instead of running on the CPU. For whole nodes instead of one GPU per task
# (--gres=gpu:8, --array=0-1), add --devices all: one advex drives every GPU
# Slurm gave it (it maps CUDA_VISIBLE_DEVICES to the Vulkan adapters).
set +e
advex attack --images "$IMAGES" --eps 1/255,2/255,4/255,8/255 \
    --out "$OUT" --format webdataset --shard-size 1000 --require-gpu --quiet
rc=$?
set -e
# 75: device lost or out of memory, worth another try on another node.
if [ "$rc" -eq 75 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
