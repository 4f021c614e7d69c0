#!/usr/bin/env bash
# The GPU run of issue 2, as one short script for a session lent an H100 (about 3-4 minutes
# after the machine starts; streamkv needs only torch, transformers and Triton, which the
# device image has). Prints versions, the Triton-vs-torch kernel check, then prefill time and
# peak memory at 4K/16K/32K tokens on a Llama-2-7B-shaped bf16 model with random weights,
# chunk 2048 as in ../shared/ANCHORS.md, with the plain-torch packing path for comparison; then
# decode ms/token after the same prompts (DynamicCache, none, streamkv-4, KIVI-4, HF quanto,
# blockwise, dense and from-the-codes read paths) beside the floor that the bytes read and the bandwidth allow.
#   device run:  bash benchmarks/gpu_speed.sh   (writes $OUT/speed.txt when OUT is set)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/speed.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$log"
python3 benchmarks/speed.py --model llama2-7b-random --lengths 4096 16384 32768 --chunk-size 2048 \
    --repeats 3 --torch-path 2>&1 | tee -a "$log"
python3 benchmarks/decode_speed.py --model llama2-7b-random --lengths 4096 16384 32768 --chunk-size 2048 \
    --steps 16 --repeats 2 --dense --codes 2>&1 | tee -a "$log"
