#!/bin/sh
# LocalAI starts this as `run.sh --addr HOST:PORT` (or `--addr=HOST:PORT`): on the host after
# extracting the image, or as the image's entrypoint. It picks the fastest llama.cpp build
# this CPU can run, reading /proc/cpuinfo as LocalAI's own llama.cpp image does, and starts
# it with the image's loader and libraries. Only shell builtins: the image has no coreutils.
# LLAMACPP_VARIANT=avx512|avx2|fallback forces a build (it must exist and the CPU must run it).
set -e
dir=${0%/*}
[ "$dir" = "$0" ] && dir=.
cpuinfo=${RUN_SH_CPUINFO:-/proc/cpuinfo}

flags=" "
if [ -r "$cpuinfo" ]; then
  while IFS= read -r line; do
    case $line in
      flags*) flags=" ${line#*:} "; break ;;
    esac
  done < "$cpuinfo"
fi

has() {
  for flag in "$@"; do
    case $flags in
      *" $flag "*) ;;
      *) return 1 ;;
    esac
  done
}

# What each build needs from the CPU (the instructions llama.cpp is compiled with).
runs() {
  case $1 in
    avx512) has avx512f avx512cd avx512vl avx512dq avx512bw avx2 fma f16c bmi2 ;;
    avx2) has avx avx2 fma f16c bmi2 ;;
    fallback) return 0 ;;
    *) return 1 ;;
  esac
}

binary=
for variant in ${LLAMACPP_VARIANT:-avx512 avx2 fallback}; do
  if [ -x "$dir/backend-llamacpp-$variant" ] && runs "$variant"; then
    binary=backend-llamacpp-$variant
    break
  fi
done
if [ -z "$binary" ]; then
  echo "run.sh: no llama.cpp build in ${dir:-/} runs on this CPU (wanted: ${LLAMACPP_VARIANT:-avx512 avx2 fallback}; flags:$flags)" >&2
  exit 1
fi
echo "run.sh: starting $binary" >&2
# llama.cpp's OpenMP threads spin less before they sleep than libgomp's default, so decoding
# keeps its speed when other processes want the cores (the binary cannot set this itself when
# the loader starts it; see backend-llamacpp/src/spin.rs). An operator's choice wins.
if [ -z "${GOMP_SPINCOUNT:-}" ] && [ -z "${OMP_WAIT_POLICY:-}" ]; then
  export GOMP_SPINCOUNT=10000
fi
if [ -x "$dir/lib/ld.so" ]; then
  exec "$dir/lib/ld.so" --library-path "$dir/lib" "$dir/$binary" "$@"
fi
exec "$dir/$binary" "$@"
