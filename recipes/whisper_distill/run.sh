#!/usr/bin/env bash
# Usage: bash recipes/whisper_distill/run.sh --data DATA --test DATA [--teacher SPEC] [--stage N] [--stop-stage N]
#                                            [--exp DIR] [--nproc N] [--decoder-layers N] [--student-from SPEC]
#
# Distil-Whisper with label-free filtering (uDistil-Whisper) on any data:
#   1 label    pseudo-label DATA with the teacher (CTranslate2 int8, packed; torchrun shards with --nproc > 1)
#   2 filter   rank the labels without references and keep the best (conf/filter.yaml)
#   3 create   cut a student from the teacher: all encoder layers, --decoder-layers maximally spaced ones;
#              or, with --student-from SPEC (e.g. bundled:tiny.en), start from that smaller pretrained Whisper:
#              on a CPU the teacher's encoder dominates decoding, so only a smaller encoder is much faster
#   4 train    KL + pseudo-label CE (conf/train.yaml); a --student-from student with another tokenizer learns
#              the pseudo-labels only (conf/train_pretrained.yaml); --nproc > 1 runs torchrun data parallel
#   5 eval     teacher and student in the same runtime on TEST (references needed)
#   6 export   ONNX encoder + decoder with KV cache, fp32 + int8, verified against PyTorch on TEST (teacher-forced
#              log-probs, WER of each variant; the stage fails if int8 loses more than the allowed WER)
#              (faster-whisper runs the student dir directly: `speechkd eval --backend ctranslate2` converts it;
#              or speechkd.onnx_export.whisper_onnx.export_whisper_ct2)
# DATA: audio folder, JSONL manifest or saved HF dataset; TEST: the same with references.
# TEACHER: bundled:base (default), a Hub id such as openai/whisper-large-v3, a CTranslate2 or HF dir.
# Re-running skips finished stages (markers in $exp/.done) and resumes unfinished ones; logs in $exp/log/.

stage=1
stop_stage=100
exp=exp/whisper_distill
teacher=bundled:base
data=
test=
decoder_layers=2
student_from=
nproc=1
threads=2

here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../common.sh"
if [ -z "$data" ] || [ -z "$test" ]; then echo "$0: --data and --test are required (see --help)" >&2; exit 2; fi
launch="$PY -m"
if [ "$nproc" -gt 1 ]; then launch="$PY -m torch.distributed.run --nproc_per_node $nproc -m"; fi

run_stage 1 label $launch speechkd label --data "$data" --out "$exp/labels/all.jsonl" --teacher "$teacher" \
  --compute-type int8 --num-threads "$threads"
run_stage 2 filter $SPEECHKD filter --config "$here/conf/filter.yaml" --labels "$exp/labels/all.jsonl" \
  --out "$exp/labels/kept.jsonl"
if [ -n "$student_from" ]; then
  run_stage 3 create $SPEECHKD student create --teacher "$teacher" --pretrained "$student_from" --out "$exp/init"
  train_conf="$here/conf/train_pretrained.yaml"
else
  run_stage 3 create $SPEECHKD student create --teacher "$teacher" --decoder-layers "$decoder_layers" --out "$exp/init"
  train_conf="$here/conf/train.yaml"
fi
run_stage 4 train $launch speechkd train --config "$train_conf" --labels "$exp/labels/kept.jsonl" \
  --teacher "$teacher" --init-from "$exp/init" --dev "$test" --out "$exp/student"
run_stage 5 eval bash -c "$SPEECHKD eval --model '$teacher' --backend transformers --data '$test' --out '$exp/eval/teacher' \
  && $SPEECHKD eval --model '$exp/student/final' --backend transformers --data '$test' --out '$exp/eval/student' \
  && $SPEECHKD report '$exp/eval/teacher' '$exp/eval/student'"
run_stage 6 export $SPEECHKD export "$exp/student/final" --out "$exp/onnx" --data "$test"
