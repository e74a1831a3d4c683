#!/usr/bin/env bash
# Every GPU figure in one run, on one H100/H200, in about 8 minutes:
#
#   pip install -e ".[examples,bench,cuda]"   # jax[cuda12] and the PyTorch peer
#   bash benchmarks/gpu.sh                    # -> benchmarks/results/gpu/<device>/
#   bash benchmarks/gpu.sh --quick            # the same steps at toy size (any machine, CPU too)
#
# Writes, under one folder named for the device (OUT=... to choose another):
#   step_overhead-float32/, step_overhead-bfloat16/  DSGD's step against AdamW's (minilm-l6,
#                                                   bert-base, vit-b16; results.json, table.md)
#   torch_peer/                                     the JAX step against PyTorch's on the GPU
#   vmap_seeds.json, vmap_seeds-bert.json           10 seeds vmapped against 10 sequential runs
#                                                   (small ViT; MiniLM at the protocol's failure
#                                                   recipe), in total and per epoch after the first
#   bert_default.json, vit_default.json             the examples' default runs, FFT and DSGD
#   device.txt, log.txt                             what ran where, and everything it printed
# A step that fails is named in log.txt and the others still run; the exit status is that of
# the first failure. Copy the folder back and commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}  # the interpreter with dsgd_jax installed (PYTHON=... to choose)
quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "gpu.sh: unknown argument $arg (only --quick)" >&2; exit 2 ;;
  esac
done
device=$("$PY" -c "import jax; d = jax.devices()[0]; print(d.device_kind.replace(' ', '-'))") || exit 1
OUT=${OUT:-benchmarks/results/gpu/$device$([ $quick = 1 ] && echo -quick)}
mkdir -p "$OUT"
log="$OUT/log.txt"
"$PY" -c "import jax; print(jax.devices(), jax.__version__)" > "$OUT/device.txt"
status=0
step() {  # step NAME COMMAND...: run one benchmark, log it, remember the first failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$log"
  local start=$SECONDS
  "$@" >> "$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
}

if [ $quick = 1 ]; then
  overhead=(--quick --configs=bert-tiny --steps=2 --variants=adamw,dsgd)
  peer=(--quick --steps=2)
  seeds=(--seeds=2 --num_epochs=2 --model=tiny --init=random --dataset=digits)
  seeds_bert=(--example=bert --seeds=2 --num_epochs=2 --model=tiny --task=synthetic)
  bert=(--flags="--model=tiny --task=synthetic --num_epochs=1")
  vit=(--flags="--model=tiny --init=random --dataset=digits --num_epochs=1")
else
  overhead=(--configs=minilm-l6,bert-base,vit-b16 --steps=20)
  peer=(--steps=20)
  seeds=(--seeds=10)
  seeds_bert=(--example=bert --seeds=10 --num_epochs=2 --task=tweets2 --max_length=64
              --learning_rate=1.5e-4 --optimizer=bertadam --warmup_ratio=0 --batch_size=5
              --grad_accum_steps=2 --max_grad_norm=0)
  bert=()
  vit=()
fi
for dtype in float32 bfloat16; do
  step "step overhead ($dtype)" "$PY" benchmarks/step_overhead.py "${overhead[@]}" \
    --dtype=$dtype --no-progress --out="$OUT/step_overhead-$dtype"
done
if "$PY" -c "import torch" 2>/dev/null; then
  step "PyTorch peer" "$PY" benchmarks/torch_peer.py "${peer[@]}" --no-progress --out="$OUT/torch_peer"
else
  echo "== PyTorch peer: skipped, torch is not installed (pip install -e \".[bench]\")" | tee -a "$log"
fi
step "vmapped seeds" "$PY" benchmarks/vmap_seeds.py "${seeds[@]}" --out="$OUT/vmap_seeds.json"
step "vmapped seeds (BERT)" "$PY" benchmarks/vmap_seeds.py "${seeds_bert[@]}" \
  --out="$OUT/vmap_seeds-bert.json"
step "BERT default runs" "$PY" benchmarks/default_runs.py --example=bert "${bert[@]}" \
  --workdir="$OUT/runs" --out="$OUT/bert_default.json"
step "ViT default runs" "$PY" benchmarks/default_runs.py --example=vit "${vit[@]}" \
  --workdir="$OUT/runs" --out="$OUT/vit_default.json"
[ $status -eq 0 ] && rm -rf "$OUT/runs"  # kept after a failure: a rerun resumes them
echo "gpu.sh: wrote $OUT (exit $status)"
exit $status
