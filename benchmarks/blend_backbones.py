"""A backbone halfway (or any share) between two starts, by averaging their weights.

Weight-space interpolation between a network and its fine-tuned copy (WiSE-FT, Wortsman et
al., CVPR 2022) often keeps most of the fine-tuned gain on shifted data and most of the
original's accuracy on the rest. Here: ImageNet MobileNetV2 and the chest X-ray backbone
pretrained from it, the variant the chest X-ray pretraining table in benchmarks/README.md
measures. Both files load through ``model.weights`` (strict key check, head dropped), so
their tensors line up by name.

    python benchmarks/blend_backbones.py --a imagenet --b tbclf:cxr_mobilenetv2_100 \
        --share-b 0.5 --out /tmp/blend50_mobilenetv2_100.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def backbone_of(weights: str, backbone: str) -> dict[str, torch.Tensor]:
    """The network of ``weights`` (a path, ``tbclf:<name>`` or ``imagenet``) without its head."""
    from tbclf.models import TimmClassifier
    from tbclf.models.backbone import offline_mobilenetv2_weights
    from tbclf.models.backbone_file import headless_state

    if weights == "imagenet":
        weights = str(offline_mobilenetv2_weights())
    return headless_state(TimmClassifier(backbone=backbone, pretrained=False, weights=weights))


def blend(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], share_b: float
) -> dict[str, torch.Tensor]:
    """(1 - share_b) * a + share_b * b for floating tensors, in fp32 and stored fp16; BatchNorm
    counters are taken from ``b``."""
    if set(a) != set(b):
        raise SystemExit(f"the two backbones differ in keys: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    for key, tb in b.items():
        ta = a[key]
        if tb.is_floating_point():
            mixed = (1 - share_b) * ta.float() + share_b * tb.float()
            out[key] = mixed.half().contiguous()
        else:
            out[key] = tb.clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--a", default="imagenet", help="first start (imagenet, a file, tbclf:NAME)"
    )
    parser.add_argument("--b", default="tbclf:cxr_mobilenetv2_100", help="second start")
    parser.add_argument("--share-b", type=float, default=0.5, help="weight of --b, 0..1")
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors")
    args = parser.parse_args()
    if not 0.0 <= args.share_b <= 1.0:
        raise SystemExit(f"--share-b must be between 0 and 1, got {args.share_b}")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or pick another --out")
    from safetensors.torch import save

    from tbclf.io import atomic_write_bytes

    tensors = blend(
        backbone_of(args.a, args.backbone), backbone_of(args.b, args.backbone), args.share_b
    )
    meta = {"a": args.a, "b": args.b, "share_b": str(args.share_b), "backbone": args.backbone}
    atomic_write_bytes(args.out, save(tensors, metadata=meta))
    print(
        f"{args.out}: {len(tensors)} tensors, {args.share_b:g} of {args.b} + the rest of {args.a}"
    )


if __name__ == "__main__":
    main()
