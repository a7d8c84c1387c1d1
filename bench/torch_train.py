"""Reference trainer for bench:train: the same architecture, batch and optimizer in PyTorch.

Reads the architecture as JSON (models/arch.ts ArchSpec) on stdin, trains on random data for a
fixed number of steps on one thread, and prints {"imagesPerSec": ..., "torch": "<version>"}.
"""
import json
import sys
import time

import torch
import torch.nn as nn


def build(arch):
    h, w, c = arch["input"]
    layers = []
    flat = None
    for l in arch["layers"]:
        k = l["kind"]
        if k == "conv":
            layers.append(nn.Conv2d(c, l["filters"], l["kernel"], l.get("stride", 1), padding=l["kernel"] // 2, bias=False))
            c = l["filters"]
        elif k == "dwconv":
            layers.append(nn.Conv2d(c, c, l["kernel"], l.get("stride", 1), padding=l["kernel"] // 2, groups=c, bias=False))
        elif k == "bn":
            layers.append(nn.BatchNorm1d(flat) if flat is not None else nn.BatchNorm2d(c))
        elif k == "relu":
            layers.append(nn.ReLU())
        elif k == "maxpool":
            layers.append(nn.MaxPool2d(l["size"]))
        elif k == "gap":
            layers.append(nn.AdaptiveAvgPool2d(1))
            layers.append(nn.Flatten())
            flat = c
        elif k == "flatten":
            layers.append(nn.Flatten())
            flat = -1
        elif k == "dropout":
            layers.append(nn.Dropout(l["rate"]))
        elif k == "dense":
            layers.append(nn.LazyLinear(l["units"]))
            flat = l["units"]
    return nn.Sequential(*layers), arch["input"]


def main():
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    arch = json.load(sys.stdin)
    steps = int(args.get("steps", 30))
    warmup = int(args.get("warmup", 3))
    batch = int(args.get("batch", 64))
    torch.set_num_threads(int(args.get("threads", 1)))
    torch.manual_seed(0)
    model, (h, w, c) = build(arch)
    x = torch.randn(batch, c, h, w)
    y = torch.randint(0, arch["classes"], (batch,))
    model(x)  # materialise lazy layers
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({"imagesPerSec": batch / median, "medianStepMs": median * 1000, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
