"""The batched device data path (DeviceCrops) against the per-sample TopDownDataset path."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from posekd_lib.data.datasets import TopDownDataset
from posekd_lib.data.device_data import DeviceCrops, as_batch
from test_data import SPREAD, _ann, _write_coco


def _dataset(tmp_path, train=True, aug="hrnet", n_images=3):
    anns = [_ann(i + 1, i // 2 + 1, {j: (x + 7 * i, y + 3 * i) for j, (x, y) in SPREAD.items()},
                 [70 + 7 * i, 25 + 3 * i, 100, 170]) for i in range(2 * n_images)]
    ann, img_dir = _write_coco(tmp_path / "coco", anns, n_images=n_images)
    return TopDownDataset(ann, img_dir, (96, 128), (24, 32), 2.0, train=train, aug=aug)


@pytest.mark.parametrize("train", [True, False])
def test_same_batches_as_the_per_sample_path(tmp_path, train):
    """Same torch seed -> the same geometry, flips, targets and metadata; pixels within the
    interpolation rounding (cv2 quantises the sampling position to 1/32 pixel)."""
    ds = _dataset(tmp_path, train=train)
    torch.manual_seed(3)
    ref = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    torch.manual_seed(3)
    got = next(iter(DataLoader(DeviceCrops(ds, "cpu"), batch_size=len(ds), shuffle=False, collate_fn=as_batch)))
    for key in ("target", "target_weight", "joints"):
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0, msg=key)
    for key in ("index", "image_id", "ann_id", "center", "scale", "rotation", "flipped", "area", "score"):
        torch.testing.assert_close(got["meta"][key], ref["meta"][key], rtol=0, atol=0, msg=key)
    if train:
        assert ref["meta"]["flipped"].any() and (ref["meta"]["rotation"] != 0).any()  # the draws were exercised
    diff = (got["image"] - ref["image"]).abs() * 0.225 * 255     # in uint8 levels
    assert got["image"].shape == ref["image"].shape
    assert diff.mean() < 0.3 and torch.quantile(diff.flatten(), 0.99) <= 2.5, (diff.mean(), diff.max())


def test_a_flip_swaps_left_and_right_in_the_pixels(tmp_path):
    """The crop of a flipped sample is the mirror of the unflipped crop (no jitter, no other draws)."""
    ds = _dataset(tmp_path, aug="light")
    ds.aug.scale_factor = ds.aug.rotation_prob = ds.aug.brightness = ds.aug.contrast = ds.aug.saturation = 0.0
    crops = DeviceCrops(ds, "cpu")
    base = ds.draw(0, crops.widths[0], None)
    mirrored = base["warp"] @ np.array([[-1.0, 0, crops.widths[0] - 1], [0, 1, 0], [0, 0, 1]])
    slot = torch.tensor([crops._slot[ds.samples[0]["image_id"]]] * 2)
    a, b = crops.cut(slot, np.stack([base["warp"], mirrored]), [None, None])
    assert not torch.allclose(a, b)
    center = crops.cut(slot[:1], np.stack([ds.draw(0, crops.widths[0], None)["warp"]]), [None])[0]
    torch.testing.assert_close(a, center)


def test_refuses_what_it_cannot_cut(tmp_path):
    with pytest.raises(TypeError, match="TopDownDataset"):
        DeviceCrops(torch.utils.data.TensorDataset(torch.zeros(2)), "cpu")
