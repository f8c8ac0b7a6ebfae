"""Bulk image classification on Ray Data with the mnv2 engine (or torchvision's, to compare).

    ray.data.read_images(DIR) -> map_batches(Classifier, batch_size=B, compute=ActorPoolStrategy(size=C))
                              -> write_parquet(OUT)

Each of the C actors loads the model once (in ``__init__``) and classifies batches of B
images; the results (path, top-k class indices, labels and probabilities) are written as
Parquet. Run it on a laptop (a local Ray cluster is started with ``--cpus`` CPUs):

    python examples/ray_bulk_classify.py --images tests/data/images --weights \
        weights/mobilenet_v2-b0353104.pth --out /tmp/preds

On a multi-node Ray cluster nothing changes but the address and the data path, which every
node must be able to read (a shared filesystem, or s3://... / gs://... which Ray Data reads
directly), as must the weights file:

    python examples/ray_bulk_classify.py --address auto --images s3://bucket/photos \
        --weights /shared/mobilenet_v2.safetensors --out s3://bucket/preds --concurrency 16

``--engine torch`` runs the same pipeline with torchvision's ``mobilenet_v2`` and its
evaluation transform (the comparison in BENCHMARKS.md). Prints one JSON line with the image
count, the wall time and the throughput.
"""

import argparse
import json
import time

import numpy as np


class Classifier:
    """A Ray Data callable class: the mnv2 model is loaded once per actor."""

    def __init__(self, weights, threads=1, top=5):
        import mobilenetv2

        self.model = mobilenetv2.Model.load(weights, threads=threads)
        self.top = top

    def __call__(self, batch):
        # read_images gives HxWx3 uint8 arrays (one 4-D array when all images share a size);
        # the engine preprocesses them as torchvision's evaluation transform does.
        results = self.model.classify(list(batch["image"]), top=self.top)
        return table(batch["path"], results)


class TorchClassifier:
    """The same callable class with torchvision's MobileNetV2 (the comparison)."""

    def __init__(self, weights, threads=1, top=5):
        import torch
        import torchvision
        from torchvision import transforms

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = torchvision.models.mobilenet_v2()
        self.model.load_state_dict(torch.load(weights, map_location="cpu"))
        self.model.eval()
        self.labels = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        self.top = top

    def __call__(self, batch):
        torch = self.torch
        x = torch.stack([self.transform(np.asarray(img)) for img in batch["image"]])
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
        p, idx = probs.topk(self.top, dim=1)
        results = [
            {
                "image": None,
                "top": [{"index": int(i), "label": self.labels[int(i)], "prob": float(q)} for i, q in zip(ii, pp)],
            }
            for ii, pp in zip(idx, p)
        ]
        return table(batch["path"], results)


def table(paths, results):
    """An Arrow table for Parquet: the path, then lists of the top-k indices, labels and
    probabilities, most probable first."""
    import pyarrow as pa

    return pa.table(
        {
            "path": pa.array([str(p) for p in paths], pa.string()),
            "index": pa.array([[t["index"] for t in r["top"]] for r in results], pa.list_(pa.int64())),
            "label": pa.array([[t["label"] for t in r["top"]] for r in results], pa.list_(pa.string())),
            "prob": pa.array([[t["prob"] for t in r["top"]] for r in results], pa.list_(pa.float32())),
        }
    )


def classify_dir(images, weights, out, engine="mnv2", batch_size=32, concurrency=2, threads=1, top=5):
    """Runs the pipeline on an already initialised Ray; returns (images, seconds)."""
    import ray

    cls = Classifier if engine == "mnv2" else TorchClassifier
    start = time.perf_counter()
    # Each actor holds `threads` CPUs for the whole run. Reading (decoding) and writing are
    # light next to the network and reserve no CPU, so they run beside the actors instead of
    # waiting forever for a CPU the actors never give back (Ray Data's backpressure bounds them).
    ds = ray.data.read_images(images, include_paths=True, mode="RGB", num_cpus=0)
    preds = ds.map_batches(
        cls,
        fn_constructor_kwargs={"weights": str(weights), "threads": threads, "top": top},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=threads,
        batch_format="numpy",
    )
    preds.write_parquet(str(out), ray_remote_args={"num_cpus": 0})
    seconds = time.perf_counter() - start
    return ray.data.read_parquet(str(out)).count(), seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="directory (or s3://, gs://) of JPEG/PNG images")
    p.add_argument("--weights", required=True, help="weights file (any format mnv2 reads; .pth for --engine torch)")
    p.add_argument("--out", required=True, help="output directory of Parquet files")
    p.add_argument("--engine", choices=["mnv2", "torch"], default="mnv2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=2, help="actors (each loads the model once)")
    p.add_argument("--threads", type=int, default=1, help="engine threads (and Ray CPUs) per actor")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--address", default=None, help="a Ray cluster's address (default: start a local one)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (without --address)")
    a = p.parse_args(argv)

    import ray

    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    n, seconds = classify_dir(
        a.images, a.weights, a.out, a.engine, a.batch_size, a.concurrency, a.threads, a.top
    )
    print(json.dumps({"engine": a.engine, "images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2)}))
    ray.shutdown()


if __name__ == "__main__":
    main()
