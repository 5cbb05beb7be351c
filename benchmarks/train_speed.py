"""Lightning's training loop vs a bare PyTorch loop on the same model and batches.

Both loops see the same in-memory batches (so data loading is out of the picture), the same
loss (BCE with logits), the same AdamW step and, on CUDA, the same autocast/channels-last
settings. The ratio is measured side by side in one process.

    python benchmarks/train_speed.py --model both --precision 32 --steps 40
    python benchmarks/train_speed.py --model both --precision 32 bf16 --steps 200 --batch 64  # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tbclf.engine.scripting import quiet_trainer
from tbclf.models import SimpleCNNClassifier, TimmClassifier
from tbclf.models.backbone import offline_mobilenetv2_weights


def build(name: str) -> pl.LightningModule:
    if name == "simple_cnn":
        return SimpleCNNClassifier(batch_norm=True, adaptive_pool=4, lr=1e-3, scheduler="none")
    return TimmClassifier(
        pretrained=False,
        weights=str(offline_mobilenetv2_weights()),
        freeze_epochs=0,
        lr=1e-3,
        scheduler="none",
    )


def make_batches(n: int, batch: int, size: int, device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        out.append(
            {
                "image": torch.rand(batch, 1, size, size, generator=gen).to(device),
                "label": (torch.rand(batch, generator=gen) > 0.5).float().to(device),
                "id": [str(i) for i in range(batch)],
                "source": ["bench"] * batch,
            }
        )
    return out


def bare_loop(
    module: pl.LightningModule, batches: list[dict], precision: str, device: torch.device
) -> float:
    module = module.to(device).train()
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def step(batch: dict) -> None:
        image = batch["image"]
        if device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = loss_fn(module(image).float(), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for batch in batches[:3]:
        step(batch)
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    _sync(device)
    return time.perf_counter() - start


class _Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.elapsed = time.perf_counter() - self.start


def lightning_loop(
    module: pl.LightningModule, batches: list[dict], precision: str, device: torch.device
) -> float:
    warmup = 3
    timer = _Timer(warmup)
    trainer = quiet_trainer(
        accelerator=device.type,
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[timer],
        precision="bf16-mixed" if precision == "bf16" else "32-true",
    )
    cpu_batches = [
        {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in b.items()}
        for b in batches[:warmup] + batches
    ]
    loader = DataLoader(cpu_batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["simple_cnn", "mobilenet", "both"], default="both")
    parser.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = ["simple_cnn", "mobilenet"] if args.model == "both" else [args.model]
    rows = []
    for name in models:
        for precision in args.precision:
            if precision == "bf16" and device.type != "cuda":
                continue
            bare, light = [], []
            for _ in range(args.repeats):  # alternate so drift hits both loops alike
                torch.manual_seed(0)
                batches = make_batches(args.steps, args.batch, args.size, device)
                bare.append(bare_loop(build(name), batches, precision, device))
                torch.manual_seed(0)
                light.append(lightning_loop(build(name), batches, precision, device))
            images = args.steps * args.batch
            row = {
                "model": name,
                "precision": precision,
                "device": str(device),
                "bare_img_s": images / min(bare),
                "lightning_img_s": images / min(light),
            }
            row["lightning_overhead_pct"] = 100 * (min(light) / min(bare) - 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"\n{gpu}, batch {args.batch}, {args.size}x{args.size}, {args.steps} steps, "
        f"best of {args.repeats}\n"
    )
    print("| model | precision | bare PyTorch img/s | Lightning img/s | Lightning overhead |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']} | {r['bare_img_s']:.0f} | "
            f"{r['lightning_img_s']:.0f} | {r['lightning_overhead_pct']:+.1f}% |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
