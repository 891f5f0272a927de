#!/usr/bin/env bash
# One prepared GPU session (a lent device machine has PyTorch but not every vlcli dependency):
#   1. install the wheels carried in .whl/ (transformers, pydantic, open_clip, typer, ...) into /tmp/site;
#   2. run the tests whose code paths change on CUDA (the engine picks the GPU and bf16 autocast,
#      the in-model CLIP encoder, extraction) — caption metrics need Java, so runs that score captions
#      are deselected;
#   3. the GPU benchmarks: e2e.py at full size (Engine.fit, BART-base / T5-base LoRA r128, batch 500, with and
#      without --compile), training step vs bare transformers (T5-base, BART-base), raw images vs precomputed
#      features, CLIP extraction throughput.
# Usage on the device machine, from the repository root:  bash benchmarks/gpu_check.sh  (output in $OUT/log)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, open_clip; print('torch', torch.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== tests on the GPU"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_raw.py tests/test_extract.py tests/test_engine.py \
  tests/test_refcoco.py tests/test_vcr.py tests/test_cls.py tests/test_pretrain.py \
  -k "not multitask and not caption and not torchrun" --tb=line 2>&1 | tail -25

[ "${BENCH:-1}" = 0 ] && exit 0

echo "== end to end: Engine.fit vs the pure step and a bare transformers+LoRA step (targets in the README)"
timeout 150 python3 benchmarks/e2e.py --device cuda --arch bart-base --batch 500 --steps 10 --images 2000 --repeats 5
timeout 150 python3 benchmarks/e2e.py --device cuda --arch t5-base --batch 500 --steps 10 --images 2000 --repeats 5
timeout 150 python3 benchmarks/e2e.py --device cuda --arch bart-base --batch 500 --steps 10 --images 2000 --repeats 5 --compile

echo "== benchmarks"
timeout 90 python3 benchmarks/train_step.py --backbone t5-base --batch 128 --steps 10 --device cuda --bf16
timeout 90 python3 benchmarks/train_step.py --backbone facebook/bart-base --batch 128 --steps 10 --device cuda --bf16
timeout 90 python3 benchmarks/raw_step.py --batch 64 --steps 10 --image_size 224 --device cuda --bf16
timeout 90 python3 benchmarks/extract.py --images 512 --device cuda --workers 8
