"""MobileNetV2 (Sandler et al., CVPR 2018) on a Rust engine.

The Python face of the ``mnv2`` project: the same library the ``mnv2`` command line runs,
with the same results bit for bit.

Quick start::

    import mobilenetv2

    model = mobilenetv2.Model.load("mobilenet_v2-b0353104.pth")   # torchvision's weights
    for r in model.classify(["cat.jpg", "dog.png"], top=3):
        print(r["image"], r["top"][0]["label"], r["top"][0]["prob"])

    import numpy as np
    logits = model.run(np.zeros((4, 3, 224, 224), np.float32))     # (4, 1000) float32

What is here:

- :class:`Model`: ``Model.load(path, threads=None, mode="fast", precision=None)`` reads every
  weights format ``mnv2`` reads (safetensors, int8 safetensors, PyTorch ``.pth``, ONNX,
  TFLite, Keras ``.h5``); ``precision="bf16"`` runs the 1x1 convolutions in bf16 (AVX512-BF16
  CPUs). ``Model.init(...)`` makes random weights. ``model.run(x)`` maps an NCHW float32
  numpy array to logits; ``model.classify(images, top=5)`` takes paths, bytes, PIL images or
  HxWx3 uint8 arrays and returns what ``mnv2 classify --json`` prints, as dicts;
  ``model.quantize(calib)`` calibrates an int8 model; ``model.save(path)`` and
  ``model.export(path)`` (ONNX) write files.
- :class:`Detector`: ``Detector.load(graph.pb, threshold=0.5)`` reads an SSDLite/SSD frozen
  graph (TF Object Detection API); ``detector.detect(images)`` returns what ``mnv2 detect
  --json`` prints, as dicts.
- :class:`Segmenter`: ``Segmenter.load(deeplab.safetensors)``; ``segmenter.segment(images)``
  gives each image's class map as an HxW uint8 array and the share of each class, as ``mnv2
  segment`` computes them.
- :class:`Error`: every failure of the engine or of its input (a ``ValueError``), with the
  library's one-line message naming the file.

Models are immutable and thread-safe; ``run`` and ``classify`` release the GIL while the
engine computes. For bulk inference on Ray Data see ``examples/ray_bulk_classify.py``.
"""

from ._native import Detector, Error, Model, Segmenter, __version__

__all__ = ["Detector", "Error", "Model", "Segmenter", "__version__"]
