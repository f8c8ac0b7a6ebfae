#!/usr/bin/env bash
# Seeds the fuzz corpora with the committed interop fixtures.
set -euo pipefail
cd "$(dirname "$0")"
D=../tests/data/interop
mkdir -p corpus/onnx corpus/keras_h5 corpus/keras_zip corpus/tflite corpus/tfgraph
cp "$D"/onnx_import/*.onnx "$D"/int8/*.onnx corpus/onnx/
cp "$D"/keras/*.h5 corpus/keras_h5/
cp "$D"/keras/*.keras corpus/keras_zip/
cp "$D"/tflite/*.tflite "$D"/int8/*.tflite corpus/tflite/
cp ../tests/data/ssdlite/subgraph.pb corpus/tfgraph/
# Issue 17's readers: the committed hostile corpus plus the fixtures.
for t in pth safetensors npy image idx weights_load metadata serve_v2; do
  mkdir -p corpus/$t
  cp ../tests/data/fuzz/$t/* corpus/$t/
done
cp ../tests/data/pth/*.pth corpus/pth/
cp ../tests/data/pth/*.pth ../tests/data/train/optim.safetensors corpus/weights_load/
cp ../tests/data/train/optim.safetensors corpus/safetensors/
cp ../tests/data/pth/mnv2_w035_c10.logits.npy corpus/npy/
cp ../tests/data/images/formats/* corpus/image/
