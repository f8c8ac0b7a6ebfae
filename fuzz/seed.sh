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
