#!/usr/bin/env python3
"""The PyTorch side of the Fashion-MNIST comparison (and of the training-speed benchmark).

Same recipe as `mnv2 train` in fashion_mnist_vs_torch.sh: torchvision's MobileNetV2 from the
real ImageNet weights, classifier replaced by a 10-class one, inputs 28x28 gray resized
(bilinear, PIL) to 64x64 RGB, padded by 8 and randomly cropped back, randomly flipped,
ImageNet normalisation; batch 128; SGD with Nesterov momentum 0.9, lr 0.05, 0.25 epoch of linear
warm-up (lr * (step + 1) / warm-up steps) then a cosine to 0 over the 6 epochs; label smoothing
0.1; weight decay 4e-5 on convolution and classifier weights (not BatchNorm, not biases, as
mnv2's default); all layers trainable; channels_last; 2 threads. Test accuracy every quarter
epoch; training time excludes evaluation. One JSON line per evaluation on stdout.

--bench H B STEPS: images/s of training steps at input HxH, batch B, on random data.
"""
import argparse
import gzip
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parents[2]


def idx(path):
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def model(weights, classes):
    m = torchvision.models.mobilenet_v2()
    if weights:
        m.load_state_dict(torch.load(weights, map_location="cpu"))
    m.classifier[1] = torch.nn.Linear(m.last_channel, classes)
    return m.to(memory_format=torch.channels_last)


def param_groups(m, wd):
    decay, no = [], []
    for name, p in m.named_parameters():
        is_weight = name.endswith("weight") and p.ndim > 1
        (decay if is_weight else no).append(p)
    return [dict(params=decay, weight_decay=wd), dict(params=no, weight_decay=0.0)]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(h, b, steps):
    torch.manual_seed(0)
    m = model(None, 10).train()
    opt = torch.optim.SGD(param_groups(m, 4e-5), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(b, 3, h, h).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y, label_smoothing=0.1).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    steady = times[2:]
    print(json.dumps(dict(engine="torch", input=h, batch=b, steps=steps,
                          images_per_s=b * len(steady) / sum(steady), peak_rss_mb=peak_rss_mb())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    ap.add_argument("--weights", default=str(ROOT / "weights" / "mobilenet_v2-b0353104.pth"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", nargs=3, type=int, metavar=("H", "B", "STEPS"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.bench:
        return bench(*a.bench)
    torch.manual_seed(a.seed)
    d = Path(a.data)
    xtr, ytr = idx(d / "train-images-idx3-ubyte.gz"), idx(d / "train-labels-idx1-ubyte.gz")
    xte, yte = idx(d / "t10k-images-idx3-ubyte.gz"), idx(d / "t10k-labels-idx1-ubyte.gz")
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = T.Compose([T.Resize(64), T.RandomCrop(64, padding=8), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(64), T.ToTensor(), norm])
    test_x = torch.stack([test_tf(Image.fromarray(im).convert("RGB")) for im in xte]).to(
        memory_format=torch.channels_last)
    test_y = torch.from_numpy(yte.astype(np.int64))
    m = model(a.weights, 10)
    opt = torch.optim.SGD(param_groups(m, 4e-5), lr=a.lr, momentum=0.9, nesterov=True)
    per_epoch = math.ceil(len(xtr) / a.batch)
    total, warm = per_epoch * a.epochs, round(0.25 * per_epoch)

    def lr_at(step):
        if step < warm:
            return a.lr * (step + 1) / warm
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    every = per_epoch // 4
    step, train_s = 0, 0.0
    for epoch in range(a.epochs):
        order = torch.randperm(len(xtr)).numpy()
        m.train()
        seen = hits = 0
        loss_sum = 0.0
        t = time.perf_counter()
        for bi in range(per_epoch):
            ids = order[bi * a.batch:(bi + 1) * a.batch]
            x = torch.stack([train_tf(Image.fromarray(xtr[i]).convert("RGB")) for i in ids]).to(
                memory_format=torch.channels_last)
            y = torch.from_numpy(ytr[ids].astype(np.int64))
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            out = m(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            step += 1
            seen += len(ids)
            hits += int((out.argmax(1) == y).sum())
            loss_sum += float(loss) * len(ids)
            if step % every == 0 or bi == per_epoch - 1:
                train_s += time.perf_counter() - t
                m.eval()
                with torch.no_grad():
                    pred = torch.cat([m(test_x[i:i + 500]).argmax(1) for i in range(0, len(test_x), 500)])
                acc = float((pred == test_y).float().mean())
                m.train()
                print(json.dumps(dict(engine="torch", epoch=step / per_epoch, step=step, train_seconds=train_s,
                                      train_loss=loss_sum / seen, train_acc=hits / seen, val_top1=acc,
                                      peak_rss_mb=peak_rss_mb())), flush=True)
                t = time.perf_counter()


if __name__ == "__main__":
    sys.exit(main())
