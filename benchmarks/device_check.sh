#!/usr/bin/env bash
# One command for an accelerator (issue 25, item 6): the step cost on the five step-cost models
# and the four strict races (MNIST, Fashion-MNIST, the saturated MLP, Lorenz96) with a 2-s
# budget and the batch-size grid 32,128,256, each writing its JSON and PNG into one folder.
#
#   benchmarks/device_check.sh                      # GPU: under 5 minutes; JSON in benchmarks/results/gpu/
#   benchmarks/device_check.sh --quick --out /tmp/d # any machine: tiny sizes, a smoke run
#   benchmarks/device_check.sh --dry-run            # print the commands, run nothing
#
# Options:
#   --out DIR       results folder (default: benchmarks/results/<backend>, e.g. gpu, from jax)
#   --quick         the studies' --quick sizes (needs --out; for a smoke test on a CPU)
#   --seeds N       seeds per race (default 1: a GPU check, not the CPU tables' 3)
#   --budget S      seconds of training per race run (default 2; with --quick the studies' own)
#   --races-only    skip the step-cost study
#   --dry-run       print the commands and exit
#   -h, --help      this text
#
# Needs the project's environment (`make venv`) and, for MNIST, RDESCENT_DATA_DIR (the Makefile's
# default: ../shared/data). Runs from the repository root whatever the current folder. On a CPU
# without --quick it takes far longer than 5 minutes (the races alone: about 30 on 2 cores).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

OUT="" QUICK="" SEEDS=1 BUDGET="" RACES_ONLY="" DRY_RUN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --seeds) SEEDS="${2:?--seeds needs a number}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --races-only) RACES_ONLY=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -z "$QUICK" ] && BUDGET="${BUDGET:-2}"
if [ -n "$QUICK" ] && [ -z "$OUT" ]; then
  echo "device_check.sh: --quick results do not belong in the repository: pass --out DIR" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export RDESCENT_DATA_DIR="${RDESCENT_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}"
if [ -z "$OUT" ]; then
  if [ -n "$DRY_RUN" ]; then
    OUT="benchmarks/results/<backend>"
  else
    OUT="benchmarks/results/$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
  fi
fi

# The races' settings: Adam's two learning rates of issue 25 and the three RD settings that led
# the CPU races (docs/benchmarks.md), each at every batch size of the grid: 5 x 3 runs a race,
# about 2.5 s each with compilation on a GPU (estimated: no GPU has run it yet).
MSE_RD="rd paper (per-output λ=1e-5),rd per-output λ=0.3 step 3,rd full λ=0.3 spring μ=0.9 step 0.1"
LORENZ_RD="rd paper (per-output λ=1e-5),rd per-output λ=0.3 step 3,rd sketched s=4 λ=0.3"
GRID="32,128,256"
[ -n "$QUICK" ] && GRID="32,128"

COMMANDS=()
[ -z "$RACES_ONLY" ] && COMMANDS+=("run step_cost $QUICK --out $OUT")
race() {  # race STUDY OPTIMIZERS
  COMMANDS+=("run $1 $QUICK ${BUDGET:+--budget $BUDGET }--seeds $SEEDS --batch-sizes $GRID --out $OUT --optimizers $2")
}
race mnist "adam lr=0.001,adam lr=0.003,$MSE_RD"
race fashion_mnist "adam lr=0.001,adam lr=0.003,$MSE_RD"
race saturation "adam lr=0.001,adam lr=0.003,$MSE_RD"
race lorenz96 "adam lr=0.001,adam lr=0.003,$LORENZ_RD"

for command in "${COMMANDS[@]}"; do
  # The optimizers' list (after --optimizers) is one argument: it holds spaces.
  head="${command%% --optimizers *}"
  if [ "$head" = "$command" ]; then optimizers=(); else optimizers=(--optimizers "${command#* --optimizers }"); fi
  read -r -a words <<< "$head"
  if [ -n "$DRY_RUN" ]; then
    printf 'python -m benchmarks %s' "${words[*]}"
    [ ${#optimizers[@]} -gt 0 ] && printf ' --optimizers "%s"' "${optimizers[1]}"
    printf '\n'
    continue
  fi
  echo "== python -m benchmarks ${words[*]} ${optimizers[*]:-}" >&2
  "$PYTHON" -m benchmarks "${words[@]}" --no-progress "${optimizers[@]}"
done
[ -n "$DRY_RUN" ] || echo "device_check.sh: results in $OUT" >&2
