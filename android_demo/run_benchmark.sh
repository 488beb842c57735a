#!/usr/bin/env bash
# Time the demo's model on an Android phone with TFLite's benchmark_model tool, via tflowrank.
#
# Usage: android_demo/run_benchmark.sh BENCHMARK_BINARY [MODEL.tflite ...] [--serial S] [--threads N]
#                                      [--runs N] [--json OUT.json]
#
#   BENCHMARK_BINARY  the Android build of TFLite's benchmark_model (for arm64 phones:
#                     android_aarch64_benchmark_model); tflowrank runs it on the phone over adb
#   MODEL.tflite      default: app/src/main/assets/model_int8.tflite (export it first: README.md)
#   --serial S        adb serial of the phone (default: the only one connected)
#   --threads N       CPU threads (default: tflowrank's, 1)
#   --runs N, --json OUT.json   passed on to `tflowrank profile`
#
# Set TFLOWRANK to run another tflowrank command (default: tflowrank on the PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tflowrank="${TFLOWRANK:-tflowrank}"

usage() { sed -n '4,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; }
fail() { echo "run_benchmark.sh: error: $*" >&2; exit 2; }

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    usage
    exit 2
fi
binary=$1
shift
[[ -f $binary ]] || fail "benchmark binary '$binary' does not exist."

models=()
options=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --serial | --threads | --runs | --json)
            [[ $# -ge 2 ]] || fail "$1 needs a value."
            options+=("$1" "$2")
            shift 2
            ;;
        -*) fail "unknown option '$1' (see --help)." ;;
        *)
            models+=("$1")
            shift
            ;;
    esac
done
if [[ ${#models[@]} -eq 0 ]]; then
    models=("$here/app/src/main/assets/model_int8.tflite")
fi
for model in "${models[@]}"; do
    [[ -f $model ]] || fail "model '$model' does not exist; export it first (android_demo/README.md)."
done

# ${array[@]+...}: bash 3.2 (macOS) treats an empty array as unset under `set -u`
exec "$tflowrank" profile --target android --benchmark-binary "$binary" \
    ${options[@]+"${options[@]}"} "${models[@]}"
