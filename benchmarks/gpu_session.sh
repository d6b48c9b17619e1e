#!/usr/bin/env bash
# One H200 session: every GPU measurement the docs report, in one go (see docs/BENCHMARKS.md).
# Usage (repo root, on the GPU machine): OUT=out_dir bash benchmarks/gpu_session.sh [FIXTURES_DIR]
# STEPS="gpu_tests sweep ..." runs only the named steps (a device call is limited to 10 minutes, the
# whole list takes ~45), e.g. six calls: "gpu_tests check_model sweep", "loss fused ddts", "pending",
# "pending8k decode", "swska train", "train8k context serve".
# On a machine of 2+ GPUs (kind nvidia-h200-x2): python3 benchmarks/bench_multi_gpu.py --gpus 2 (FSDP2 vs one
# GPU, ~5 minutes for the two default presets at 20 steps).
# Where a step's copies come from (CPU, no GPU needed): RODIMUS_KERNELS=triton TRITON_INTERPRET=1
# python benchmarks/trace_copies.py --models rodimus --d-model 1024 --vocab 32000 --seq-len 64 --micro-batch 1
# The fla baselines of bench_kernels need fla-core, flash-linear-attention and einops importable
# (benchmark environment only); without them those rows are skipped.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
FIX=${1:-../shared/fixtures/official}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG="$OUT/session.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$LOG"
step() {
  name=$1; limit=$2; shift 2
  case " ${STEPS:-all} " in *" all "*|*" $name "*) ;; *) return 0 ;; esac
  echo "=== $name $* ($(date -u +%FT%TZ))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v -i -E "warn|Loading weights|it/s]" | tee -a "$LOG"
}
step gpu_tests 480 python3 -m pytest -q -p no:cacheprovider tests/ops tests/models/test_triton_model.py \
  tests/models/test_static_decode.py tests/train/test_cuda_graphs.py
step check_model 150 python3 benchmarks/check_gpu_model.py --fixtures "$FIX"
step sweep 200 python3 benchmarks/bench_kernels.py --quick --only sweep --budget 180 --json "$OUT/sweep.json"
step loss 120 python3 benchmarks/bench_loss.py --rows 16384 --d-model 1024 --vocab 32000 --device cuda
step sweep 120 python3 benchmarks/sweep_short_conv.py --rows 16384 --dim 2048
step fused 200 python3 benchmarks/bench_kernels.py --only fused,layer --profile --budget 180 --json "$OUT/k_fused_layer.json"
# fla's chunk_gla autotuning alone took over a minute per shape (even cut to 4 configs): give it room
step ddts 300 python3 benchmarks/bench_kernels.py --only ddts --budget 280 --json "$OUT/k_ddts.json"
step ddts 90 python3 benchmarks/ddts_forward.py '[{}, {"fwd": {"split_max_programs": 0, "BV": 64}}]'
# options kept off, to re-check on another card (H100, seventeenth session, docs/BENCHMARKS.md): the fused DDTS
# walk over segments of long sequences (LAUNCH["fwd"]["segment"]) with their entering states as one batched
# GEMM (LAUNCH["walk"]["starts_gemm"]) or walked, and the fused walk's pipeline stages and V blocks, against
# the default; then the SW-SKA decode kernels' row-sum form and other tiles against the padded-dot default
step pending 300 python3 benchmarks/ddts_forward.py \
  '[{}, {"fwd": {"segment": 32, "segment_min_chunks": 48}, "walk": {"starts_gemm": true}},
    {"fwd": {"segment": 16, "segment_min_chunks": 48}, "walk": {"starts_gemm": true}},
    {"fwd": {"segment": 32, "segment_min_chunks": 48}}, {"fwd": {"fast_stages_halved": 2}},
    {"fwd": {"fast_stages_halved": 4}}, {"fwd": {"fast_min_programs": 128}}]'
step pending 120 python3 benchmarks/ddts_forward.py --backward '[{}, {"bwd_state": {"chunk_stages": 3}},
  {"walk": {"num_stages": 2}}, {"walk": {"segment": 32, "starts_gemm": true}}]'
echo '{"fwd": {"segment": 32, "segment_min_chunks": 48}, "walk": {"starts_gemm": true}}' > "$OUT/fwd_segments.json"
step pending 120 python3 benchmarks/swska_decode.py '[{}, {"dot": false}, {"dot_tiles": [[null, 64, 4]]},
  {"dot_tiles": [[null, 32, 2]]}, {"programs": 1024}]'
step pending8k 80 python3 benchmarks/bench_train.py --cuda-graphs --models rodimus --steps 4 --warmup 2 --seq-len 8192 \
  --micro-batch 2
step pending8k 80 python3 benchmarks/bench_train.py --cuda-graphs --models rodimus --steps 4 --warmup 2 --seq-len 8192 \
  --micro-batch 2 --ddts-launch "$OUT/fwd_segments.json"
echo '{"walk": {"segment": 16, "starts_gemm": true}}' > "$OUT/walk_segments.json"
step pending8k 80 python3 benchmarks/bench_train.py --cuda-graphs --models rodimus --steps 4 --warmup 2 --seq-len 8192 \
  --micro-batch 2 --ddts-launch "$OUT/walk_segments.json"
step pending 100 python3 benchmarks/bench_decode.py --models rodimus_plus --batches 1,16 --contexts 1024,32768 --fuse-qkv \
  --json "$OUT/bench_decode_plus.json"
step swska 240 python3 benchmarks/bench_kernels.py --only swska --flex --budget 220 --json "$OUT/k_swska.json"
step decode 120 python3 benchmarks/bench_kernels.py --only decode --budget 100 --json "$OUT/k_decode.json"
step train 150 python3 benchmarks/bench_train.py --cuda-graphs --models rodimus,rodimus_plus --steps 10 --warmup 3 \
  --json "$OUT/bench_train.json"
step train 60 python3 benchmarks/bench_train.py --models llama --steps 10 --warmup 3 --json "$OUT/bench_train_llama.json"
# eager Rodimus too: DDP/FSDP runs cannot use graphs, and how launch-bound eager still is matters there
step train 90 python3 benchmarks/bench_train.py --models rodimus,rodimus_plus --steps 8 --warmup 3 \
  --json "$OUT/bench_train_eager.json"
step train8k 120 python3 benchmarks/bench_train.py --cuda-graphs --models rodimus,rodimus_plus --steps 4 --warmup 2 \
  --seq-len 8192 --micro-batch 2 --json "$OUT/bench_train_8k.json"
step train8k 60 python3 benchmarks/bench_train.py --models llama --steps 4 --warmup 2 --seq-len 8192 --micro-batch 2 \
  --json "$OUT/bench_train_8k_llama.json"
step context 110 python3 benchmarks/bench_context.py --d-model 2048 --n-layer 12 --vocab 32000 \
  --contexts 1024,4096,16384,65536 --decode-tokens 32 --device cuda --dtype bfloat16 --out /tmp/context
step serve 100 python3 benchmarks/bench_serve.py --device cuda --dtype bfloat16 --d-model 1024 --n-layer 16 \
  --vocab 32000 --prompt-tokens 1024 --max-tokens 64 --concurrency 1 8 64 --memory-contexts 1024 4096 16384 \
  --json "$OUT/bench_serve.json"
cp /tmp/context/*.json /tmp/context/*.md /tmp/context/*.png "$OUT/" 2>/dev/null
echo "=== done $(date -u +%FT%TZ)" | tee -a "$LOG"
