#!/usr/bin/env python3
"""PyTorch training speed of the network and loss `mnv2 train --task detection` trains, for
scripts/train/ssd_speed_vs_torch.sh: SSDLite on torchvision's mobilenet_v2 features, the TF SSD
loss, RMSProp, float32, eager, channels_last.

The network: torchvision `mobilenet_v2(width_mult=W).features`; feature map 0 is the expansion
(conv[0], after BatchNorm and ReLU6) of features[14], map 1 the output of features[18] (the last
conv), as mnv2's plan taps them. The head is scripts/fixtures/ssd_train.py's hand-written SSDLite
head as nn.Modules (extra layers 2..5: 1x1 -> BN -> ReLU6, 3x3 stride-2 depthwise with TF 'SAME'
padding -> BN -> ReLU6, 1x1 -> BN -> ReLU6 at depths max(16, int(d W)) of 512, 256, 256, 128,
the 1x1 at half; per map a box and a class tower: 3x3 depthwise -> BN -> ReLU6, 1x1 with bias;
anchors per location 3, 6, 6, 6, 6, 6), BatchNorm eps 1e-3 momentum 0.1 in train mode.

The loss is scripts/fixtures/ssd_loss.py's (argmax matcher at 0.5 with force-matching, box coder
(10, 10, 5, 5), sigmoid cross-entropy, smooth L1, hard example mining through torchvision's NMS
at 0.99 with 3 negatives per positive, normalised by the matches) with its one per-anchor Python
loop (the first-maximum argmax) replaced by torch.argmax (which returns the first maximum too),
so the reference is not slowed by Python; encode, decode and the mining are ssd_loss.py's code.

Inputs: random normal images (no data loading or augmentation, which favours PyTorch) and 2 to 4
fixed random boxes per image. Optimizer: torch.optim.RMSprop(lr 0.004, alpha 0.9, momentum 0.9,
eps 1.0) with weight decay 4e-5 on conv weights. Prints one JSON line: engine, input, batch,
images_per_s (of the steps after the first two), peak_rss_mb.

Usage: ssd_torch.py --threads T --width W RES BATCH STEPS
"""
import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import ssd_loss  # noqa: E402

ANCHORS = [3, 6, 6, 6, 6, 6]


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class SamePad(nn.Module):
    """TF 'SAME' padding of a 3x3 stride-2 conv: the smaller half on top/left."""

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        ph = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
        pw = max((math.ceil(w / 2) - 1) * 2 + 3 - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class Ssdlite(nn.Module):
    def __init__(self, width, logits):
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(width_mult=width).features
        c0 = self.features[14].conv[0][0].out_channels
        c1 = self.features[18][0].out_channels
        self.extras = nn.ModuleList()
        prev, chans = c1, [c0, c1]
        for d in [512, 256, 256, 128]:
            half, full = max(16, int(d // 2 * width)), max(16, int(d * width))
            self.extras.append(nn.Sequential(
                nn.Conv2d(prev, half, 1, bias=False), bn(half), nn.ReLU6(),
                SamePad(), nn.Conv2d(half, half, 3, 2, groups=half, bias=False), bn(half), nn.ReLU6(),
                nn.Conv2d(half, full, 1, bias=False), bn(full), nn.ReLU6()))
            prev = full
            chans.append(full)
        self.towers = nn.ModuleList()
        for c, a in zip(chans, ANCHORS):
            for out in (4 * a, logits * a):
                self.towers.append(nn.Sequential(
                    nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), bn(c), nn.ReLU6(), nn.Conv2d(c, out, 1)))
        self.logits = logits

    def forward(self, x):
        for i in range(14):
            x = self.features[i](x)
        m0 = self.features[14].conv[0](x)
        x = self.features[14](x)
        for i in range(15, 19):
            x = self.features[i](x)
        maps = [m0, x]
        for e in self.extras:
            x = e(x)
            maps.append(x)
        n = x.shape[0]
        codes, logits = [], []
        for k, fm in enumerate(maps):
            codes.append(self.towers[2 * k](fm).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(self.towers[2 * k + 1](fm).permute(0, 2, 3, 1).reshape(n, -1, self.logits))
        return torch.cat(logits, 1), torch.cat(codes, 1), [tuple(m.shape[2:]) for m in maps]


def anchors(grids):
    lo, hi, layers = 0.2, 0.95, 6
    scales = [lo + (hi - lo) * i / (layers - 1) for i in range(layers)] + [1.0]
    out = []
    for k, (gh, gw) in enumerate(grids):
        if k == 0:
            specs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            specs = [(scales[k], r) for r in [1.0, 2.0, 0.5, 3.0, 0.3333]]
            specs.append((math.sqrt(scales[k] * scales[k + 1]), 1.0))
        for y in range(gh):
            for x in range(gw):
                yc, xc = (y + 0.5) / gh, (x + 0.5) / gw
                for s, r in specs:
                    hh, ww = s / math.sqrt(r), s * math.sqrt(r)
                    out.append([yc - hh / 2, xc - ww / 2, yc + hh / 2, xc + ww / 2])
    return torch.tensor(out, dtype=torch.float32)


def match(anchors_, gt):
    """ssd_loss.match without its per-anchor Python loop (torch.argmax gives the first maximum)."""
    a = anchors_.shape[0]
    if gt.shape[0] == 0:
        return torch.full((a,), -1, dtype=torch.long)
    sim = ssd_loss.iou(gt, anchors_)
    best_val, best_box = sim.max(0).values, sim.argmax(0)
    m = torch.where(best_val >= 0.5, best_box, torch.full_like(best_box, -1))
    for g in reversed(range(gt.shape[0])):
        m[sim[g].argmax()] = g
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("res", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("steps", type=int)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ssd_loss.match = match
    k = a.classes + 1
    net = Ssdlite(a.width, k).to(memory_format=torch.channels_last).train()
    decay = [p for n, p in net.named_parameters() if p.dim() == 4]
    other = [p for n, p in net.named_parameters() if p.dim() != 4]
    opt = torch.optim.RMSprop([{"params": decay, "weight_decay": 4e-5}, {"params": other, "weight_decay": 0.0}],
                              lr=0.004, alpha=0.9, momentum=0.9, eps=1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, a.res, a.res, generator=g).to(memory_format=torch.channels_last)
    images = []
    for i in range(a.batch):
        boxes = []
        for j in range(2 + i % 3):
            y0, x0 = torch.rand(2, generator=g).tolist()
            h, w = 0.1 + 0.4 * torch.rand(2, generator=g)
            boxes.append((int(torch.randint(a.classes, (1,), generator=g)),
                          [y0 * 0.5, x0 * 0.5, min(1.0, y0 * 0.5 + float(h)), min(1.0, x0 * 0.5 + float(w))]))
        images.append(boxes)
    an = None
    times = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        logits, codes, grids = net(x)
        if an is None:
            an = anchors(grids)
        total = ssd_loss.tf_ssd_loss(an, logits, codes, images, k)[0]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    steady = times[2:] if len(times) > 2 else times
    ips = a.batch * len(steady) / sum(steady)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(engine="torch", input=a.res, batch=a.batch, images_per_s=ips, peak_rss_mb=rss,
                          loss=float(total.detach()))))


if __name__ == "__main__":
    main()
