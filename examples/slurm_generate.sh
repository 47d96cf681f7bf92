#!/bin/bash
# Generate a paired synthetic dataset (image, lesion mask, healthy substrate) on a Slurm cluster.
#
# Each array task writes the samples k with k % N == i (N = array size, i = the task's index);
# sample k's noise comes from (--seed, k) alone, so the merged result is byte-for-byte the run a
# single machine would make, whatever N and --batch-size are. A killed or failed task is re-run
# with the same command: --resume skips the samples whose files and manifest line verify.
#
#   sbatch --array=0-15 examples/slurm_generate.sh            # 16 shards
#   # when all tasks are done, merge their manifests:
#   synthbrain manifest merge synth/stroke/manifest.shard-*.jsonl --out synth/stroke/manifest.jsonl
#
# synthbrain reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT itself (no --shard needed); ids
# may start at any value (--array=1-16 works too).

#SBATCH --job-name=synthbrain-generate
#SBATCH --output=logs/%x-%A_%a.out
#SBATCH --time=04:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --gres=gpu:1          # remove on CPU-only partitions (add --device cpu below)

set -euo pipefail

N_SAMPLES=${N_SAMPLES:-2000}
LESION=${LESION:-stroke}
OUT=${OUT:-synth/${LESION}}
SEED=${SEED:-0}
BATCH=${BATCH:-16}             # 16 on a GPU; 1 on CPU nodes

mkdir -p logs
# One OpenMP thread per core actually given to the task (oversubscription slows PyTorch a lot).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

synthbrain generate \
    --n "${N_SAMPLES}" \
    --lesion "${LESION}" \
    --out "${OUT}" \
    --seed "${SEED}" \
    --batch-size "${BATCH}" \
    --layout nnunet \
    --resume \
    --json
