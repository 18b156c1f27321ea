"""Heatmap and PAF codecs: targets land on the keypoints and decode back to them."""
import numpy as np
import pytest
import torch

from posekd_lib.codecs import HeatmapCodec, PafCodec, flip_back, flip_test_average
from posekd_lib.keypoints import (COCO_FLIP_PAIRS, OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS,
                                  coco17_to_openpose18)


def _random_keypoints(rng, k=17, size=(192, 256), margin=8):
    return np.column_stack([rng.uniform(margin, size[0] - margin, k), rng.uniform(margin, size[1] - margin, k),
                            np.full(k, 2.0)])


def test_heatmap_encode_is_the_official_gaussian():
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    k = np.zeros((17, 3))
    k[0] = [41.0, 62.0, 2]                 # heatmap (10.25, 15.5) -> rounded centre (10, 16)
    hm, w = codec.encode(k)
    assert hm.shape == (17, 64, 48) and hm.dtype == np.float32 and w.dtype == np.float32
    ys, xs = np.mgrid[:64, :48]
    window = (np.abs(xs - 10) <= 6) & (np.abs(ys - 16) <= 6)
    ref = np.exp(-((xs - 10) ** 2 + (ys - 16) ** 2) / 8.0) * window
    np.testing.assert_allclose(hm[0], ref, atol=1e-6)
    assert hm[0, 16, 10] == 1.0 and hm[0, 16, 17] == 0.0 and hm[0, 16, 16] > 0
    assert w[0] == 1 and np.all(w[1:] == 0) and np.all(hm[1:] == 0)


def test_target_weight_zero_for_unlabelled_and_outside():
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    k = np.array([[50, 50, 0], [50, 50, 1], [-100, 50, 2], [50, 400, 2], [-20, 50, 2], [191, 255, 2]]
                 + [[0, 0, 0]] * 11)
    hm, w = codec.encode(k)
    np.testing.assert_array_equal(w[:6], [0, 1, 0, 0, 1, 1])
    assert hm[0].max() == 0 and hm[2].max() == 0 and hm[3].max() == 0
    # a point 5 cells left of the map still trains its border (official rule), with a weaker peak
    assert 0 < hm[4].max() < 0.1


def test_heatmap_encode_broadcasts_over_a_batch():
    rng = np.random.default_rng(0)
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    ks = np.stack([_random_keypoints(rng) for _ in range(3)])
    hm, w = codec.encode(ks)
    assert hm.shape == (3, 17, 64, 48) and w.shape == (3, 17)
    np.testing.assert_array_equal(hm[1], codec.encode(ks[1])[0])


@pytest.mark.parametrize("method", ["official", "dark"])
@pytest.mark.parametrize("sizes,sigma", [(((192, 256), (48, 64)), 2), (((288, 384), (72, 96)), 3)])
def test_decode_of_encode_recovers_keypoints(method, sizes, sigma):
    rng = np.random.default_rng(1)
    codec = HeatmapCodec(*sizes, sigma=sigma)
    k = _random_keypoints(rng, size=sizes[0], margin=4 * sigma * 4)   # DARK's blur is biased at borders
    hm, _ = codec.encode(k)
    coords, maxvals = codec.decode(torch.from_numpy(hm)[None], method=method)
    err = np.abs(coords[0].numpy() * codec.stride - k[:, :2])
    assert err.max() <= codec.stride.max() / 2 + 1e-6       # rounding the centre to a cell
    torch.testing.assert_close(maxvals, torch.ones(1, 17))


def test_dark_is_more_accurate_than_official_on_subpixel_peaks():
    rng = np.random.default_rng(2)
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    centres = np.column_stack([rng.uniform(5, 42, 17), rng.uniform(5, 58, 17)])
    ys, xs = np.mgrid[:64, :48]
    hm = np.exp(-((xs - centres[:, 0, None, None]) ** 2 + (ys - centres[:, 1, None, None]) ** 2) / 8.0)
    hm = torch.from_numpy(hm).float()[None]
    err_off = np.linalg.norm(codec.decode(hm, "official")[0][0].numpy() - centres, axis=1)
    err_dark = np.linalg.norm(codec.decode(hm, "dark")[0][0].numpy() - centres, axis=1)
    assert err_dark.mean() < 0.05 < err_off.mean()
    assert err_dark.mean() < 0.3 * err_off.mean()


def test_official_decode_quarter_shift_and_masking():
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    hm = torch.zeros(1, 3, 64, 48)
    hm[0, 0, 20, 10], hm[0, 0, 20, 11], hm[0, 0, 21, 10] = 1.0, 0.5, 0.2   # right and down higher
    hm[0, 1, 20, 1], hm[0, 1, 20, 2] = 1.0, 0.5                           # px = 1: on the border, no shift
    hm[0, 2] = -1.0                                                       # max <= 0: coordinates zeroed
    hm[0, 2, 5, 5] = -0.5
    coords, maxvals = codec.decode(hm)
    torch.testing.assert_close(coords[0], torch.tensor([[10.25, 20.25], [1.0, 20.0], [0.0, 0.0]]))
    torch.testing.assert_close(maxvals[0], torch.tensor([1.0, 1.0, -0.5]))
    with pytest.raises(ValueError, match="decode method"):
        codec.decode(hm, method="soft")


def test_flip_back_twice_is_identity_and_swaps_channels():
    hm = torch.randn(2, 17, 8, 6)
    torch.testing.assert_close(flip_back(flip_back(hm, COCO_FLIP_PAIRS), COCO_FLIP_PAIRS), hm)
    f = flip_back(hm, COCO_FLIP_PAIRS)
    torch.testing.assert_close(f[:, 2], hm[:, 1].flip(-1))
    torch.testing.assert_close(f[:, 0], hm[:, 0].flip(-1))
    np.testing.assert_array_equal(flip_back(hm.numpy(), COCO_FLIP_PAIRS), f.numpy())


def test_flip_test_average_matches_official_shift():
    out = torch.randn(1, 17, 8, 6)
    raw = flip_back(out, COCO_FLIP_PAIRS)           # a perfectly flip-equivariant model
    torch.testing.assert_close(flip_test_average(out, raw, COCO_FLIP_PAIRS, shift=False), out)
    avg = flip_test_average(out, raw, COCO_FLIP_PAIRS, shift=True)
    shifted = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    torch.testing.assert_close(avg, (out + shifted) / 2)
    assert torch.equal(raw, flip_back(out, COCO_FLIP_PAIRS))  # inputs untouched


# --------------------------------------------------------------------------- PAF codec
def _person(cx, cy, s=1.0):
    """An upright COCO-17 person centred at (cx, cy), about 100*s px tall."""
    base = np.array([[0, -40], [-3, -43], [3, -43], [-7, -41], [7, -41], [-12, -30], [12, -30], [-15, -12],
                     [15, -12], [-16, 5], [16, 5], [-8, 5], [8, 5], [-8, 25], [8, 25], [-8, 45], [8, 45]], float)
    return np.column_stack([base * s + [cx, cy], np.full(17, 2.0)])


def test_paf_targets_unit_along_limbs_and_zero_elsewhere():
    codec = PafCodec((128, 128), stride=8)
    k = _person(60, 64)[None]
    heat, paf = codec.encode(k)
    assert heat.shape == (19, 16, 16) and paf.shape == (38, 16, 16)
    np.testing.assert_allclose(heat[18], 1 - heat[:18].max(0), atol=1e-6)
    op = coco17_to_openpose18(k)[0]
    ys, xs = np.mgrid[:16, :16]
    for (a, b), (cx, cy) in zip(OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS):
        pa, pb = codec.to_map(op[a, :2]), codec.to_map(op[b, :2])
        u = (pb - pa) / np.linalg.norm(pb - pa)
        norm = np.hypot(paf[cx], paf[cy])
        on = norm > 0
        assert on.any()
        np.testing.assert_allclose(norm[on], 1.0, atol=1e-5)
        np.testing.assert_allclose(paf[cx][on], u[0], atol=1e-5)
        # every non-zero cell lies within one cell of the segment
        rel = np.stack([xs[on] - pa[0], ys[on] - pa[1]], 1)
        across = np.abs(rel[:, 0] * u[1] - rel[:, 1] * u[0])
        assert across.max() <= 1.0 + 1e-6
    far = (xs > 12)                                              # the person spans x in [2, 10] cells
    assert np.all(paf[:, far] == 0) and heat[:18, far].max() < 0.05


def test_paf_averages_where_people_overlap_and_heatmaps_take_the_max():
    codec = PafCodec((128, 128), stride=8)
    a, b = _person(60, 64), _person(60, 64)
    b[:, 0] = 2 * 60 - b[:, 0]                                   # mirrored copy: limbs point the other way in x
    b[:, 2] = 2
    heat1, paf1 = codec.encode(a[None])
    heat, paf = codec.encode(np.stack([a, b]))
    np.testing.assert_allclose(heat[:18], np.maximum(heat1[:18], codec.encode(b[None])[0][:18]), atol=1e-6)
    assert heat[:18].max() <= 1.0
    cx, cy = OPENPOSE_PAF_CHANNELS[OPENPOSE_LIMBS.index((1, 0))]  # neck -> nose is vertical: identical
    np.testing.assert_allclose(paf[cy], paf1[cy], atol=1e-6)
    both = (np.hypot(*codec.encode(a[None])[1][[0, 1]]) > 0) & (np.hypot(*codec.encode(b[None])[1][[0, 1]]) > 0)
    _, paf_b = codec.encode(b[None])
    np.testing.assert_allclose(paf[0][both], (paf1[0][both] + paf_b[0][both]) / 2, atol=1e-6)


@pytest.mark.parametrize("upsample", [True, False])
def test_paf_decode_recovers_people_from_clean_targets(upsample):
    codec = PafCodec((384, 384), stride=8)
    people = np.stack([_person(70, 110, 2.0), _person(190, 150, 1.8), _person(310, 230, 1.5)])
    people[1, 3, 2] = 0                                          # an unlabelled ear stays missing
    heat, paf = codec.encode(people)
    found = codec.decode(heat, paf, upsample=upsample)
    assert len(found) == 3
    for p in found:
        gt = people[np.argmin(np.abs(people[:, 5, 0] - p.keypoints[5, 0]))]
        lab = gt[:, 2] > 0
        if not upsample:       # at map resolution face points 1 cell apart merge: check the body only
            lab[:5] = False
        assert np.all(p.keypoints[lab, 2] > 0.5) and np.all(p.keypoints[gt[:, 2] == 0, 2] == 0)
        tol = 1.0 if upsample else codec.stride / 2
        assert np.abs(p.keypoints[lab, :2] - gt[lab, :2]).max() <= tol + 0.5
        if upsample:
            assert p.num_parts == 18 - (~lab).sum()


def test_paf_decode_empty_maps_give_nobody():
    codec = PafCodec((128, 128))
    heat, paf = codec.encode(np.zeros((0, 17, 3)))
    assert heat[18].min() == 1.0 and paf.max() == 0
    assert codec.decode(heat, paf) == []
