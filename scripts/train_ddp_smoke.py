"""Smoke run of ``posekd_lib.train.fit`` on a tiny synthetic pose set, alone or under torchrun.

    python scripts/train_ddp_smoke.py --out /tmp/smoke
    torchrun --nproc_per_node 2 scripts/train_ddp_smoke.py --out /tmp/smoke
    torchrun --nproc_per_node 2 scripts/train_ddp_smoke.py --out /tmp/smoke --hint   # a feature-KD distiller

Each rank writes the final state of what it trained to ``OUT/rank<r>.pt`` (with ``--hint`` the
distiller's: student, hint adapters, schedule step); rank 0 also writes the run folder
``OUT/smoke/`` (checkpoints, history). The tests reuse ``BlobPoseDataset`` and ``tiny_posenet``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from posekd_lib.distill.losses import joints_mse
from posekd_lib.models.students import PoseNet
from posekd_lib.train import fit


class BlobPoseDataset(Dataset):
    """``n`` noise images with one bright blob per keypoint and Gaussian targets at stride 4.

    Items look like ``TopDownDataset``'s: ``image`` (3, H, W), ``target`` (K, H/4, W/4),
    ``target_weight`` (K,) with about 1 in 5 joints unlabelled (weight 0), ``joints`` (K, 3) and
    ``meta`` (a dict of tensors). ``noise`` > 0 adds fresh Gaussian noise to each image read (a
    random augmentation drawn from torch's global RNG, so resume tests see RNG state matter).
    """

    def __init__(self, n: int = 16, num_joints: int = 4, size: tuple[int, int] = (48, 64), sigma: float = 1.5,
                 seed: int = 0, noise: float = 0.0):
        self.noise = noise
        g = torch.Generator().manual_seed(seed)
        w, h = size
        hw, hh = w // 4, h // 4
        xy = torch.rand(n, num_joints, 2, generator=g) * torch.tensor([hw - 1.0, hh - 1.0])
        gx, gy = torch.arange(hw).float(), torch.arange(hh).float()
        d2 = (gx - xy[..., 0, None, None]) ** 2 + (gy[:, None] - xy[..., 1, None, None]) ** 2
        self.target = torch.exp(-d2 / (2 * sigma ** 2))
        self.target_weight = (torch.rand(n, num_joints, generator=g) > 0.2).float()
        blobs = nn.functional.interpolate(self.target, size=(h, w), mode="bilinear", align_corners=False)
        colour = torch.rand(num_joints, 3, generator=g)
        self.image = 0.3 * torch.randn(n, 3, h, w, generator=g) + torch.einsum("nkhw,kc->nchw", blobs, colour) * 3
        self.joints = torch.cat([xy * 4, 2 * self.target_weight[..., None]], dim=-1)

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict:
        image = self.image[i] + self.noise * torch.randn(self.image.shape[1:]) if self.noise else self.image[i]
        return {"image": image, "target": self.target[i], "target_weight": self.target_weight[i],
                "joints": self.joints[i], "meta": {"index": torch.tensor(i)}}


def tiny_posenet(num_joints: int = 4, width: int = 16) -> PoseNet:
    """A ~10k-parameter stride-4 heatmap net with the students' backbone/neck/head layout."""
    def block(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    return PoseNet(nn.Sequential(block(3, width, 2), block(width, width, 2)), block(width, width, 1),
                   nn.Conv2d(width, num_joints, 1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step (to interrupt a run)")
    ap.add_argument("--hint", action="store_true",
                    help="train a FeatureKD distiller (a wider random teacher's neck as the hint, FPD term, "
                         "linearly decaying KD weight) instead of the bare student")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = tiny_posenet()
    loader = DataLoader(BlobPoseDataset(n=16), batch_size=4, shuffle=True)
    if args.hint:
        from posekd_lib.distill import FeatureKD

        teacher = tiny_posenet(width=24)
        model = FeatureKD(teacher, model, {"neck": "neck"}, beta=1.0, alpha_logits=0.5, input_size=(48, 64),
                          schedule="linear_decay", total_steps=args.epochs * len(loader))
    task = model.loss if args.hint else lambda outputs, batch: joints_mse(outputs, batch["target"],
                                                                          batch["target_weight"])

    def loss_fn(outputs, batch):
        time.sleep(args.sleep)
        return task(outputs, batch)

    fit(model, loader, loss_fn=loss_fn, epochs=args.epochs, out_dir=args.out, run_name="smoke",
        save_every_steps=args.save_every, progress=False, lr=1e-2, threads=args.threads)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(model.state_dict(), args.out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
