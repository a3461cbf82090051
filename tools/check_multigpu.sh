#!/usr/bin/env bash
# DDP and FSDP on 2 GPUs give the same losses as 1 GPU at the same global batch (16 sequences per step).
#   bash tools/check_multigpu.sh [extra `tnl train` overrides]
# Needs 2 CUDA GPUs and TNL_DATA_DIR (or the hub). Writes runs under outputs/check_multigpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=outputs/check_multigpu
rm -rf "$OUT"
COMMON=(experiment=quickstart model.decoder_layers=2 "model.linear_use_lrpe_list=[1,0]" train.max_steps=20
        train.seq_len=512 train.mixed_precision=bf16 train.eval_every=0 train.save_every=10
        train.final_eval=false train.export=false train.progress=false train.log_every=1 "$@")
$PY train.py "${COMMON[@]}" train.batch_size=8 train.grad_accum=2 output_dir=$OUT/one_gpu
accelerate launch --config_file configs/accelerate/ddp_2gpu.yaml train.py "${COMMON[@]}" \
    train.batch_size=8 train.grad_accum=1 output_dir=$OUT/ddp
accelerate launch --config_file configs/accelerate/fsdp_2gpu.yaml train.py "${COMMON[@]}" \
    train.batch_size=8 train.grad_accum=1 output_dir=$OUT/fsdp
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def losses(run):
    rows = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}
ref = losses("one_gpu")
bad = 0
print(f"{'step':>4} {'1 GPU':>9} {'DDP':>9} {'FSDP':>9}")
for run in ("ddp", "fsdp"):
    got = losses(run)
    for step, value in ref.items():
        if abs(got[step] - value) > 2e-2 * abs(value):  # bf16: same batches, different reduction order
            bad += 1
            print(f"MISMATCH {run} step {step}: {got[step]} vs {value}")
ddp, fsdp = losses("ddp"), losses("fsdp")
for step in sorted(ref):
    print(f"{step:>4} {ref[step]:9.4f} {ddp[step]:9.4f} {fsdp[step]:9.4f}")
print("OK: DDP and FSDP match one GPU" if not bad else f"FAILED: {bad} mismatches")
sys.exit(1 if bad else 0)
PYEOF
