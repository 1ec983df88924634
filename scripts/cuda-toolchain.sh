#!/usr/bin/env bash
# Sets up a CUDA 13.0 build toolchain on a machine with no GPU and no CUDA install, from PyPI wheels,
# so that crates which need nvcc/libcuda at build or link time (candle-core's `cuda` feature) build here.
# The binaries it produces run on a machine with an NVIDIA driver for CUDA >= 13.0.
#
#   bash scripts/cuda-toolchain.sh [PREFIX]      (default PREFIX: $HOME/.cache/cuda13)
#   source PREFIX/env.sh                                  (then: cargo build --release --features cuda)
#
# Pinned to 13.0.x on purpose: PTX from a newer nvcc may not load on a CUDA 13.0 driver.
set -euo pipefail
P=${1:-$HOME/.cache/cuda13}
mkdir -p "$P"
if [[ ! -x $P/venv/bin/python ]]; then python3 -m venv "$P/venv"; fi
"$P/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
"$P/venv/bin/pip" install -q --no-deps nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
W=$("$P/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
R=$P/root
mkdir -p "$R/lib"
for d in bin include nvvm; do ln -sfn "$W/$d" "$R/$d"; done
ln -sfn lib "$R/lib64"
# unversioned names for the linker; libnvrtc alone also in nvrtc-lib, the run-time search path
# that env.sh sets (never lib/, whose libcuda stub would shadow a real driver)
mkdir -p "$R/nvrtc-lib"
for f in "$W"/lib/*.so.*; do
  b=$(basename "$f"); ln -sfn "$f" "$R/lib/$b"; ln -sfn "$f" "$R/lib/${b%%.so.*}.so"
  if [[ $b == libnvrtc* ]]; then ln -sfn "$f" "$R/nvrtc-lib/$b"; ln -sfn "$f" "$R/nvrtc-lib/${b%%.so.*}.so"; fi
done
# libcuda.so comes with the driver, which this machine lacks: link against a stub with the same
# symbols and soname; the real library is loaded on the GPU machine.
# The driver API's symbols are read from cudarc's sources: the version Cargo.lock pins (any
# version where there is no lock file), from cargo's registry (`cargo fetch` downloads it).
lock=$(dirname "$0")/../Cargo.lock
ver=$(grep -A1 '^name = "cudarc"$' "$lock" 2>/dev/null | sed -n 's/^version = "\(.*\)"$/\1/p' || true)
reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"${ver:-0.*}" 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z $reg ]]; then
  echo "cuda-toolchain: cudarc ${ver:-0.x} is not in ${CARGO_HOME:-$HOME/.cargo}/registry (run cargo fetch first)" >&2
  exit 1
fi
grep -ho 'pub fn cu[A-Za-z0-9_]*\|pub unsafe fn cu[A-Za-z0-9_]*' "$reg"/src/driver/sys/*.rs \
  | sed 's/.* fn //' | sort -u | sed 's/.*/void &(void){}/' > "$R/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$R/lib/libcuda.so" "$R/cuda_stub.c"
ln -sfn libcuda.so "$R/lib/libcuda.so.1"
cat > "$P/env.sh" <<ENV
export CUDA_HOME=$R CUDA_PATH=$R
export PATH=$R/bin:\$PATH
export LD_LIBRARY_PATH=$R/nvrtc-lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}   # libnvrtc only (the NVRTC compile test)
export CUDA_COMPUTE_CAP=90      # H100/H200; no nvidia-smi here to ask
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
ENV
echo "cuda-toolchain: ready; source $P/env.sh"
"$R/bin/nvcc" --version | tail -n 2
