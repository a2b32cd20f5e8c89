#!/usr/bin/env bash
# One lent-GPU session's benchmarks, in one call: the GPU and versions, then the training
# step on synthetic data (both models, both memory layouts, eager and torch.compile), the
# trainer's own loop against a bare one, and end to end from JPEGs. Each part has its own
# time limit so one slow part cannot eat the session; every log also goes to $OUT.
#
#   bash bench/gpu_session.sh            # on the GPU machine (python3 there holds torch)
#   SMOKE=1 PY=.venv/bin/python bash bench/gpu_session.sh   # here, tiny sizes on the CPU,
#                                                           # to prove the script runs
# The GPU machine's python3 is not our lock's (another torch); its banner says which.
set -u
PY=${PY:-python3}
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=$PWD/trainer${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [[ ${SMOKE:-} ]]; then
  B=8; STEPS="--warmup 1 --steps 2"; E2E="--batch 8 --workers 1 --warmup 1 --steps 2"
  TR="--device cpu --image-size 64 --batch-size 4 --steps 2 --warmup 1 --rounds 1"; LIMIT=300
else
  B=256; STEPS="--warmup 15 --steps 50"; E2E="--batch 256 --workers 14 --warmup 10 --steps 60"
  TR="--device gpu --amp bf16 --image-size 224 --batch-size 256 --steps 30 --warmup 10 --rounds 2"; LIMIT=${LIMIT:-90}
fi

part() {  # part NAME SECONDS command...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "===== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep -v "^{" "$OUT/$name.log" | tail -n 25
  echo "===== $name: exit $rc, $((SECONDS - t0)) s"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || true
  echo "cores: $(nproc)"; $PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
} 2>&1 | tee "$OUT/versions.log"

part step_eager "$((LIMIT + 30))" $PY bench/bench_gpu_step.py --model resnext50_32x4d,resnest50 --batch $B --amp bf16 --channels-last both --profile $STEPS --json
part e2e_resnext "$LIMIT" $PY bench/bench_end_to_end.py --model resnext50_32x4d --compare $E2E --json
part e2e_resnest "$LIMIT" $PY bench/bench_end_to_end.py --model resnest50 $E2E --json
part trainer "$LIMIT" $PY bench/bench_trainer.py $TR
part step_compile "$((LIMIT * 2))" $PY bench/bench_gpu_step.py --model resnext50_32x4d,resnest50 --batch $B --amp bf16 --channels-last on --compile $STEPS --json
echo "===== summary"
grep -h "img/s" "$OUT"/step_*.log "$OUT"/e2e_*.log "$OUT"/trainer.log | grep -v '^{' | cut -c1-220
