"""`tritonclient[http]` (Triton's own client, from PyPI) against a running `mnv2 serve`.

Checks that an unmodified Open Inference Protocol client works: health, metadata, inference
with BYTES images and with FP32 NCHW tensors, in JSON and in Triton's binary tensor data
extension, and that errors come back as the client's exception with the server's message.

The reference is PyTorch: tests/data/classify_expected.json (written by
scripts/fixtures/classify.py: torchvision's MobileNetV2 on the same photo and weights). The
FP32 input is preprocessed here with PIL and numpy exactly as torchvision's eval transform
does it (Resize(256) bilinear on the PIL image, CenterCrop(224), ToTensor, Normalize).

Usage: python tritonclient_test.py --url 127.0.0.1:PORT --root REPO_ROOT
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

MODEL = "mobilenet_v2"
# Logits: PyTorch against our engine, fp32 throughout, different summation orders (measured:
# 1.6e-5 on this photo).
LOGIT_TOL = 1e-4


def torchvision_eval(path: Path) -> np.ndarray:
    """torchvision's ImageNet eval transform on a PIL image, as NCHW float32."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long_ / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def infer(client, inp, binary_out):
    out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
    return client.infer(MODEL, [inp], outputs=[out]).as_numpy("logits")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--root", required=True, type=Path)
    args = ap.parse_args()
    photo = args.root / "tests/data/images/chelsea.png"
    expected = json.loads((args.root / "tests/data/classify_expected.json").read_text())
    ref = next(e for e in expected["images"] if e["image"] == "chelsea.png")

    c = httpclient.InferenceServerClient(url=args.url)
    assert c.is_server_live(), "not live"
    assert c.is_server_ready(), "not ready"
    assert c.is_model_ready(MODEL), "model not ready"
    meta = c.get_model_metadata(MODEL)
    assert meta["name"] == MODEL, meta
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["input"]["datatype"] == "FP32" and inputs["input"]["shape"] == [-1, 3, 224, 224], meta
    assert inputs["image"]["datatype"] == "BYTES", meta
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}], meta
    print("health and metadata: ok")

    # BYTES: the encoded photo, preprocessed by the server (binary extension in and out).
    data = np.array([photo.read_bytes()], dtype=np.object_)
    img = httpclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(data, binary_data=True)
    by_bytes = infer(c, img, True)
    assert by_bytes.shape == (1, 1000) and by_bytes.dtype == np.float32, (by_bytes.shape, by_bytes.dtype)

    # FP32: the tensor preprocessed here, sent as JSON and as binary.
    x = torchvision_eval(photo)
    results = {}
    for binary_in in (False, True):
        for binary_out in (False, True):
            t = httpclient.InferInput("input", list(x.shape), "FP32")
            t.set_data_from_numpy(x, binary_data=binary_in)
            results[(binary_in, binary_out)] = infer(c, t, binary_out)
    for k, v in results.items():
        assert np.array_equal(v, results[(True, True)]), f"JSON/binary encodings disagree: {k}"
    by_tensor = results[(True, True)]

    # Against PyTorch: the top-5 classes, in order, and their logits.
    for name, logits in (("BYTES", by_bytes[0]), ("FP32", by_tensor[0])):
        top = np.argsort(-logits, kind="stable")[:5]
        assert [int(i) for i in top] == [p["index"] for p in ref["top"]], (name, top, ref["top"])
        worst = max(abs(float(logits[p["index"]]) - p["logit"]) for p in ref["top"])
        assert worst <= LOGIT_TOL, f"{name}: logit differs from PyTorch's by {worst}"
        print(f"{name}: top-5 equals PyTorch's; largest top-5 logit difference {worst:.2e} (<= {LOGIT_TOL})")
    # The server's preprocessing is PIL's, bit for bit: the same tensor, the same logits.
    gap = float(np.max(np.abs(by_bytes - by_tensor)))
    assert np.array_equal(by_bytes, by_tensor), f"BYTES and FP32 logits differ by up to {gap}"
    print("BYTES vs FP32 (PIL-preprocessed here) logits: identical")

    # Two images in one request.
    two = np.array([photo.read_bytes()] * 2, dtype=np.object_)
    img2 = httpclient.InferInput("image", [2], "BYTES")
    img2.set_data_from_numpy(two, binary_data=True)
    pair = infer(c, img2, True)
    assert pair.shape == (2, 1000), pair.shape
    assert int(np.argmax(pair[0])) == int(np.argmax(pair[1])) == 285

    # Errors arrive as the client's exception carrying the server's message.
    for bad, needle in (
        (np.zeros((1, 3, 2, 2), dtype=np.float32), "smaller than the minimum"),
        (np.full((1, 3, 32, 32), np.nan, dtype=np.float32), "not finite"),
    ):
        t = httpclient.InferInput("input", list(bad.shape), "FP32")
        t.set_data_from_numpy(bad, binary_data=True)
        try:
            infer(c, t, True)
        except InferenceServerException as e:
            assert needle in str(e), e
        else:
            raise AssertionError(f"no error for {needle}")
    try:
        c.get_model_metadata("resnet50")
    except InferenceServerException as e:
        assert "unknown model `resnet50`" in str(e), e
    else:
        raise AssertionError("no error for an unknown model")
    assert c.is_server_ready(), "stopped serving after bad requests"
    print("errors: ok")
    print("tritonclient test: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
