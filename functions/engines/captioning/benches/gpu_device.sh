#!/usr/bin/env bash
# Captioning throughput on a CUDA machine: the Rust bench and the Python reference, each on the
# CUDA execution provider and on that machine's CPU, in one run.
#
#   functions/engines/captioning/benches/gpu_device.sh <onnxruntime-gpu wheel> <rust bench binary> <out dir>
#
# Prerequisites on the GPU machine (it needs no network): Python 3 with numpy and tokenizers, the
# CUDA 13 runtime, cuBLAS and cuDNN 9 libraries (PyPI nvidia-* cu13 wheels, or a CUDA base
# image), and the two files named above, built or fetched elsewhere:
#   - the onnxruntime-gpu 1.31.1 wheel for this Python (it is built against CUDA 13 / cuDNN 9);
#   - the bench binary from `cargo bench -p coldpath-captioning --bench captioning --no-run`. It
#     finds the model under the checkout it was built in (CARGO_MANIFEST_DIR), so run this script
#     from a checkout at that same path (a symlink will do).
# Writes machine.txt, {rust,python}-{cuda,cpu}.json and their logs into <out dir>.
set -euo pipefail
wheel=$1 bench=$2 out=$3
mkdir -p "$out"
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$site" "$wheel"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
ort_lib=$site/onnxruntime/capi/libonnxruntime.so.1.31.1

# ONNX Runtime's CUDA provider dlopens libcudart/libcublas/libcudnn: put the nvidia-* wheels'
# lib folders on the loader path (a CUDA base image has them on it already).
nvidia_libs=$(python3 - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})))
EOF
)
export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"; } \
  | tee "$out/machine.txt"

here=$(cd "$(dirname "$0")" && pwd)
for provider in cuda cpu; do
  echo "== python reference, $provider" >&2
  python3 "$here/gpu_bench.py" --provider "$provider" >"$out/python-$provider.json" \
    2>"$out/python-$provider.log"
  echo "== rust bench, $provider" >&2
  # COLDPATH_PYTHON unset: the Python side runs above, once per provider.
  env -u COLDPATH_PYTHON ORT_DYLIB_PATH="$ort_lib" COLDPATH_PROVIDER="$provider" \
    "$bench" --bench >"$out/rust-$provider.json" 2>"$out/rust-$provider.log"
done
