#!/usr/bin/env bash
# Usage: bash recipes/ctc_edge/run.sh --data DATA --test DATA [--teacher SPEC] [--stage N] [--stop-stage N]
#                                     [--exp DIR] [--nproc N] [--calibration DATA]
#
# A small CTC student for edge devices, from unlabelled audio:
#   1 label    pseudo-label DATA with the Whisper teacher (packed, resumable; torchrun shards with --nproc > 1)
#   2 filter   keep the best labels without references (conf/filter.yaml)
#   3 train    the CTC student of conf/ctc.yaml on the kept pseudo-labels
#   4 lm       a word trigram (ARPA) from the kept pseudo-labels' text, for beam search (no references)
#   5 eval     teacher (faster-whisper int8), student greedy and student + LM beam search on TEST
#   6 export   ONNX fp32 + int8 (dynamic; static QDQ too when --calibration is given), tokens.txt, metadata,
#              lm.arpa (the runtime decodes with it by default); verified on TEST, the best passing int8
#              graph becomes the runtime default
#   7 verify   PyTorch vs ONNX log-probs and WER on TEST again (standalone check); fails if int8 drifts
#   8 device   the torch-free runtime (speechkd_runtime, with the LM) on TEST, evaluated like the others
# DATA: audio folder, JSONL manifest or saved HF dataset; TEST: the same with references.
# TEACHER: bundled:base (default), a Hub id (openai/whisper-small), a CTranslate2 or HF dir.
# Re-running skips finished stages (markers in $exp/.done) and resumes unfinished ones; logs in $exp/log/.

stage=1
stop_stage=100
exp=exp/ctc_edge
teacher=bundled:base
data=
test=
calibration=
nproc=1
threads=2

here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../common.sh"
if [ -z "$data" ] || [ -z "$test" ]; then echo "$0: --data and --test are required (see --help)" >&2; exit 2; fi
launch="$PY -m"
if [ "$nproc" -gt 1 ]; then launch="$PY -m torch.distributed.run --nproc_per_node $nproc -m"; fi
quant=dynamic
if [ -n "$calibration" ]; then quant="dynamic,static --calibration $calibration"; fi

run_stage 1 label $launch speechkd label --data "$data" --out "$exp/labels/all.jsonl" --teacher "$teacher" \
  --compute-type int8 --num-threads "$threads"
run_stage 2 filter $SPEECHKD filter --config "$here/conf/filter.yaml" --labels "$exp/labels/all.jsonl" \
  --out "$exp/labels/kept.jsonl"
run_stage 3 train $launch speechkd train --config "$here/conf/ctc.yaml" --labels "$exp/labels/kept.jsonl" \
  --teacher "$teacher" --dev "$test" --out "$exp/student"
run_stage 4 lm $SPEECHKD lm --text "$exp/labels/kept.jsonl" --out "$exp/lm/kept.3gram.arpa"
run_stage 5 eval bash -c "$SPEECHKD eval --model '$teacher' --backend ctranslate2 --compute-type int8 --data '$test' \
  --out '$exp/eval/teacher' && $SPEECHKD eval --model '$exp/student/final' --data '$test' --out '$exp/eval/student' \
  && $SPEECHKD eval --model '$exp/student/final' --data '$test' --lm '$exp/lm/kept.3gram.arpa' \
  --out '$exp/eval/student_lm'"
run_stage 6 export $SPEECHKD export "$exp/student/final" --out "$exp/onnx" --quantize $quant --data "$test" \
  --lm "$exp/lm/kept.3gram.arpa"
run_stage 7 verify $SPEECHKD verify "$exp/onnx" --data "$test"
run_stage 8 device bash -c "$SPEECHKD eval --model '$exp/onnx' --data '$test' --out '$exp/eval/student_onnx' \
  && $SPEECHKD report '$exp/eval/teacher' '$exp/eval/student' '$exp/eval/student_lm' '$exp/eval/student_onnx'"
