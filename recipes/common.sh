# Shared helpers for speechkd recipes (sourced by recipes/*/run.sh; not run on its own).
#
# Kaldi-style options: every variable a recipe defines before sourcing this file can be set from the
# command line as `--name value` or `--name=value` (dashes or underscores), e.g. `--stage 3`,
# `--stop-stage=5`, `--teacher bundled:base`. Each stage runs once: it leaves `$exp/.done/<N>.<name>`
# when it succeeds and is skipped on re-runs, so a recipe killed at any point resumes where it stopped
# (the library commands themselves resume inside a stage: labelling and training are resumable).

set -euo pipefail

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    --*=*) name="${1%%=*}"; value="${1#*=}"; shift ;;
    --*)
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 2; fi
      name="$1"; value="$2"; shift 2 ;;
    *) echo "$0: unexpected argument '$1' (options look like --name value; see --help)" >&2; exit 2 ;;
  esac
  name="${name#--}"; name="${name//-/_}"
  if ! declare -p "$name" >/dev/null 2>&1; then
    echo "$0: unknown option --${name//_/-} (see --help for the options)" >&2; exit 2
  fi
  printf -v "$name" '%s' "$value"
done

PY=${PY:-python}
if [ -z "${SPEECHKD:-}" ]; then SPEECHKD="$PY -m speechkd"; fi
mkdir -p "$exp/log" "$exp/.done"

# run_stage N NAME COMMAND...: run COMMAND when N is within [stage, stop_stage] and not done yet;
# its output goes to the terminal and to $exp/log/NAME.log.
run_stage() {
  local n="$1" name="$2"; shift 2
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 0; fi
  if [ -f "$exp/.done/$n.$name" ]; then
    echo "== stage $n ($name): done before, skipping (delete $exp/.done/$n.$name to redo)"
    return 0
  fi
  echo "== stage $n ($name)"
  local start=$SECONDS
  "$@" 2>&1 | tee "$exp/log/$name.log"
  touch "$exp/.done/$n.$name"
  echo "== stage $n ($name) finished in $((SECONDS - start)) s"
}
