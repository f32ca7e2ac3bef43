"""SGD step time for AlexNet's parameters: fused vs foreach vs the per-tensor loop (baseline).

python benchmarks/optimizer_step.py
"""

import time

import torch

from alexnet import create_model


def main() -> None:
    model = create_model("alexnet", num_classes=1000)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    results = {}
    for label, kw in [
        ("for-loop (baseline)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **kw)
        opt.step()
        t = time.perf_counter()
        for _ in range(10):
            opt.step()
        results[label] = (time.perf_counter() - t) / 10
    base = results["for-loop (baseline)"]
    print(f"{'optimizer':22s} {'ms/step':>8s} {'speed-up':>9s}")
    for label, s in results.items():
        print(f"{label:22s} {s * 1000:8.1f} {base / s:8.2f}x")


if __name__ == "__main__":
    main()
