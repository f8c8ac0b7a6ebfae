#!/usr/bin/env python3
"""The PyTorch side of the segmentation training-speed benchmark (seg_speed_vs_torch.sh).

Trains the same network as `mnv2 train --task segmentation --head deeplab` (Mobile DeepLabv3,
the paper's chosen head: image pooling + 1x1 branch, projection, dropout 0.1, logits,
align_corners bilinear upsampling; the hand-written PyTorch model of
scripts/fixtures/deeplab_torch.py, width 1.0, output stride 16) on random images and labels
(11 classes, about 1 pixel in 20 ignored as 255): pixel-wise softmax cross-entropy with
ignore_index=255, SGD with momentum 0.9, weight decay 4e-5 on convolution weights, BatchNorm on
batch statistics, channels_last. No data loading or augmentation at all (which favours PyTorch).

  seg_speed_vs_torch.py CROP BATCH STEPS [--threads N]

Prints one JSON line: images/s over the steps after two warm-up steps, and peak RSS in MB.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from deeplab_torch import DeepLab  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crop", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=11)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = DeepLab(1.0, a.classes, 16, False).train().to(memory_format=torch.channels_last)
    decay = [p for n, p in net.named_parameters() if p.dim() == 4]
    rest = [p for n, p in net.named_parameters() if p.dim() != 4]
    opt = torch.optim.SGD([dict(params=decay, weight_decay=4e-5), dict(params=rest, weight_decay=0.0)],
                          lr=0.007, momentum=0.9)
    x = torch.randn(a.batch, 3, a.crop, a.crop).to(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch, a.crop, a.crop))
    y[torch.rand(y.shape) < 0.05] = 255
    times = []
    for _ in range(a.steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, out = net(x)
        F.cross_entropy(out, y, ignore_index=255).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    steady = times[2:]
    print(json.dumps(dict(engine="torch", crop=a.crop, batch=a.batch, threads=a.threads, steps=a.steps,
                          images_per_s=a.batch * len(steady) / sum(steady),
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


if __name__ == "__main__":
    main()
