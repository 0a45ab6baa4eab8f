#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from PyPI wheels (the only CUDA wheels that ship nvcc) into the
# folder given as $1, for the llama.cpp worker's CUDA build (make build-llama-cuda). The worker
# is built with llama.cpp's GGML_CUDA_NO_VMM, so nothing links the driver library: no stub of
# libcuda.so is needed; the driver comes from the GPU machine at run time.
set -euo pipefail
DEST="${1:?usage: make-cuda-root.sh DEST}"
[ -x "$DEST/bin/nvcc" ] && exit 0
W="$(mktemp -d)"; U="$(mktemp -d)"
trap 'rm -rf "$W" "$U"' EXIT
python3 -m pip download --quiet --no-deps -d "$W" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.0.2.14
for w in "$W"/*.whl; do python3 -m zipfile -e "$w" "$U"; done
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"; mv "$U/nvidia/cu13" "$DEST.partial"
chmod +x "$DEST.partial"/bin/* "$DEST.partial"/nvvm/bin/*
ln -sfn lib "$DEST.partial/lib64"
(cd "$DEST.partial/lib" && for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13; do
  ln -sf "$f" "${f%%.so*}.so"; done)
mv "$DEST.partial" "$DEST"
"$DEST/bin/nvcc" --version | tail -2
