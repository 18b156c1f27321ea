"""Training crops cut on the training device, a whole batch at once (the GPU data path).

A :class:`~posekd_lib.data.datasets.TopDownDataset` decodes one image per sample and warps it with cv2 on
a CPU worker: about a millisecond a crop, which starves a GPU that trains a small net on
thousands of crops a second. :class:`DeviceCrops` decodes every training image once into one
zero-padded ``uint8`` tensor on the device, then per batch draws each sample's geometry and colour
factors on the CPU with the dataset's own :meth:`~posekd_lib.data.datasets.TopDownDataset.draw` (the same
random draws, in the same order, as the per-sample path), encodes the heatmap targets with the
dataset's codec (vectorised over the batch), and cuts all crops in one ``grid_sample``::

    loader = shuffled_loader(train_ds, 256, loader="device", device="cuda")   # DeviceCrops + as_batch
    fit(model, loader, device="cuda", ...)

The batches have the per-sample path's keys and shapes (``image``, ``target``, ``target_weight``,
``joints``, ``meta``), so ``fit`` and the distillers take them as they are. Geometry, targets and
metadata are identical to the per-sample path's; the pixels differ by interpolation rounding only
(cv2 quantises the sampling position to 1/32 pixel, ``grid_sample`` does not): see
``tests/test_device_data.py``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .augment import jitter_weights, sample_rng
from .datasets import IMAGENET_MEAN, IMAGENET_STD, TopDownDataset
from .images import read_rgb
from .keypoints import COCO_JOINTS_WEIGHT

# cv2's RGB -> gray weights (ITU-R BT.601), as cv2.cvtColor(COLOR_RGB2GRAY) applies them
_GRAY = (0.299, 0.587, 0.114)


def _collate(values: list):
    """One metadata key of a batch, as ``default_collate`` makes it (Python floats as float64)."""
    if torch.is_tensor(values[0]):
        return torch.stack(values)
    return torch.as_tensor(values, dtype=torch.float64 if isinstance(values[0], float) else None)


LOADERS = ("cpu", "device")


def shuffled_loader(ds, batch_size: int, loader: str = "cpu", device="cpu", num_workers: int = 0):
    """The shuffled training DataLoader (full batches only) of ``ds``: per-sample crops on
    ``num_workers`` workers (``loader="cpu"``), or whole batches cut on ``device`` by
    :class:`DeviceCrops` (``"device"``: the same draws and targets; for a GPU, whose small students
    a CPU cannot feed). ``budgets.Budget.loader`` chooses it for the students."""
    if loader not in LOADERS:
        raise ValueError(f"loader={loader!r}; choose one of {LOADERS}")
    if loader == "device":
        return DataLoader(DeviceCrops(ds, device), batch_size=batch_size, shuffle=True, drop_last=True,
                          collate_fn=as_batch)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers)


def as_batch(batch: dict) -> dict:
    """The DataLoader ``collate_fn`` for :class:`DeviceCrops`: its batches come collated."""
    return batch


class DeviceCrops(Dataset):
    """The augmented training crops of ``ds`` (a ``TopDownDataset`` with ``train=True``), cut on ``device``.

    Its ``__getitems__`` returns a whole collated batch (the DataLoader calls it with the batch's
    indices; use ``collate_fn=as_batch`` and ``num_workers=0``). Memory: every training image of
    the dataset, ``uint8``, padded to the largest (the embedded workshop split: about 0.5 GB).
    """

    def __init__(self, ds: TopDownDataset, device="cuda"):
        if not isinstance(ds, TopDownDataset):
            raise TypeError(f"DeviceCrops needs a TopDownDataset, got {type(ds).__name__}")
        self.ds, self.device = ds, torch.device(device)
        ids = sorted({s["image_id"] for s in ds.samples})
        self._slot = {image_id: i for i, image_id in enumerate(ids)}
        images = []
        for image_id in ids:
            images.append(read_rgb(ds.image_file(image_id), f"image id {image_id}"))
        h = max(im.shape[0] for im in images)
        w = max(im.shape[1] for im in images)
        canvas = torch.zeros((len(images), 3, h, w), dtype=torch.uint8)
        widths = torch.empty(len(images), dtype=torch.int64)
        for i, im in enumerate(images):
            canvas[i, :, :im.shape[0], :im.shape[1]] = torch.from_numpy(im).permute(2, 0, 1)
            widths[i] = im.shape[1]
        self.images = canvas.to(self.device)
        self.widths = widths.tolist()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out_w, out_h = ds.input_size
        ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float32), torch.arange(out_w, dtype=torch.float32),
                                indexing="ij")
        self._dst = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).to(self.device)  # (h, w, 3) crop pixels

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict:
        ds = self.ds
        indices = [int(i) for i in indices]
        slots = [self._slot[ds.samples[i]["image_id"]] for i in indices]
        geos = [ds.draw(i, self.widths[slot], sample_rng() if ds.train else None) for i, slot in zip(indices, slots)]
        joints = np.stack([ds.crop_joints(g) for g in geos])
        target, weight = ds.codec.encode(joints)
        if ds.use_joints_weight:
            weight = weight * COCO_JOINTS_WEIGHT
        image = self.cut(torch.as_tensor(slots, device=self.device), np.stack([g["warp"] for g in geos]),
                         [g["colour"] for g in geos])
        metas = [ds.meta(i, g) for i, g in zip(indices, geos)]
        meta = {k: _collate([m[k] for m in metas]) for k in metas[0]}
        return {"image": image, "target": torch.from_numpy(target).to(self.device),
                "target_weight": torch.from_numpy(weight.astype(np.float32)).to(self.device),
                "joints": torch.from_numpy(joints.astype(np.float32)).to(self.device), "meta": meta}

    def cut(self, slots: torch.Tensor, warps: np.ndarray, colours) -> torch.Tensor:
        """Normalised crops ``(B, 3, h, w)`` of the images in ``slots`` through the image -> crop
        ``warps`` ``(B, 2, 3)``, colour-jittered where ``colours[i]`` holds factors."""
        full = np.concatenate([warps, np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(warps), 1, 3))], axis=1)
        inv = torch.as_tensor(np.linalg.inv(full)[:, :2], dtype=torch.float32, device=self.device)  # crop -> image
        src = torch.einsum("hwk,bjk->bhwj", self._dst, inv)                     # (B, h, w, 2) image pixels
        _, _, img_h, img_w = self.images.shape
        grid = torch.stack([src[..., 0] * (2.0 / (img_w - 1)) - 1, src[..., 1] * (2.0 / (img_h - 1)) - 1], dim=-1)
        crops = F.grid_sample(self.images[slots].float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=True).round_()                       # uint8 levels, as cv2's warp
        jitter = [i for i, c in enumerate(colours) if c is not None]
        if jitter:
            w = torch.tensor([jitter_weights(colours[i]) for i in jitter], dtype=torch.float32, device=self.device)
            x = crops[jitter]
            gray = (x[:, 0] * _GRAY[0] + x[:, 1] * _GRAY[1] + x[:, 2] * _GRAY[2]).round_().unsqueeze(1)
            mean = gray.mean(dim=(2, 3), keepdim=True)
            a, g, m = (w[:, j].view(-1, 1, 1, 1) for j in range(3))
            crops[jitter] = (a * x + g * gray + m * mean).round_().clamp_(0, 255)
        return (crops / 255.0 - self._mean) / self._std
