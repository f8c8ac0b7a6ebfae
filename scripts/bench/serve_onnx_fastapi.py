"""The typical Python deployment of the same model, for scripts/bench/serve_load.sh:
ONNX Runtime (the model exported by `mnv2 export --format onnx`) behind FastAPI on uvicorn,
with the same route and answer as `mnv2 serve`: POST /v1/classify, raw image body -> the
top-5 classes as JSON. Preprocessing is torchvision's eval transform with PIL and numpy.

Env: MODEL (the .onnx file), THREADS (ONNX Runtime intra-op threads). Labels are left out
(null): they cost nothing measurable.
"""

import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

opts = ort.SessionOptions()
opts.intra_op_num_threads = int(os.environ.get("THREADS", "2"))
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["MODEL"], opts, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
app = FastAPI()


def preprocess(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@app.post("/v1/classify")
async def classify(request: Request, top: int = 5):
    """A sync section in the thread pool (ONNX Runtime releases the GIL while it runs)."""
    data = await request.body()

    def work():
        try:
            x = preprocess(data)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
            raise HTTPException(status_code=400, detail=f"body: cannot read image: {e}")
        logits = session.run(None, {input_name: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        idx = np.argsort(-p, kind="stable")[:top]
        return [{"image": "body", "top": [{"index": int(i), "label": None, "prob": float(p[i])} for i in idx]}]

    return await run_in_threadpool(work)
