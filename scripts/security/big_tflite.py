#!/usr/bin/env python3
"""A legitimate worst case for the TFLite reader's memory: a full-integer int8 MobileNetV2 whose
file is close to 64 MB (issue 17's bound: no input file of at most 64 MB makes any `mnv2`
command use more than 1 GB). Almost all of it is the classifier: 1280 x CLASSES int8 weights.

Usage: python scripts/security/big_tflite.py OUT.tflite [CLASSES]   (tensorflow-cpu, keras 3)
Not a fixture (too big to commit): scripts/security/memory_probe.sh makes it and measures
`mnv2`'s peak RSS reading it.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from interop_keras import randomise  # noqa: E402


def main():
    import keras
    import tensorflow as tf

    out = sys.argv[1]
    classes = int(sys.argv[2]) if len(sys.argv) > 2 else 48000
    model = keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=classes, classifier_activation=None
    )
    randomise(model, 17)  # BatchNorm statistics as in the interop fixtures, so calibration is sane
    rng = np.random.default_rng(17)

    def data():
        for _ in range(4):
            yield [rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = data
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, out)
    print(f"{out}: {len(blob)} bytes, {classes} classes")


if __name__ == "__main__":
    main()
