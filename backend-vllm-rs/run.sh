#!/bin/sh
# LocalAI starts this as `run.sh --addr HOST:PORT` (or `--addr=HOST:PORT`): on the host after
# extracting the image, or as the image's entrypoint. The worker chooses its CPU kernels at
# run time (candle's gemm dispatch), so one build serves every x86-64 CPU; it is started with
# the image's loader and libraries. Only shell builtins: the image has no coreutils.
set -e
dir=${0%/*}
[ "$dir" = "$0" ] && dir=.
if [ -x "$dir/lib/ld.so" ]; then
  exec "$dir/lib/ld.so" --library-path "$dir/lib" "$dir/backend-vllm-rs" "$@"
fi
exec "$dir/backend-vllm-rs" "$@"
