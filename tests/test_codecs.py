"""Heatmap and PAF codecs: targets land on the keypoints and decode back to them."""
import numpy as np
import pytest
import torch

from posekd_lib.data.codecs import HeatmapCodec, PafCodec, flip_back, flip_test_average
from posekd_lib.data.keypoints import (COCO_FLIP_PAIRS, OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS,
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


# --------------------------------------------------------------------------- PafCodec.encode: sparse == dense
_CUT = float(np.exp(-4.6052))


def _dense_encode_reference(codec: PafCodec, keypoints):
    """The previous ``PafCodec.encode``, kept as the reference: every map cell of every (person, limb)
    pair, a dense (P, L, h, w) test and an einsum over people. The sparse encoder must agree bit for bit."""
    k = np.asarray(keypoints, dtype=np.float64).reshape(-1, 17, 3)
    w, h = codec.map_size
    shift = codec.stride / 2 - 0.5
    cx = np.arange(w) * codec.stride + shift
    cy = np.arange(h) * codec.stride + shift
    op = coco17_to_openpose18(k)
    lab = op[..., 2] > 0
    inv = 1.0 / (2 * codec.sigma ** 2)
    gx = np.exp(-((cx - op[..., 0, None]) ** 2) * inv)
    gy = np.exp(-((cy - op[..., 1, None]) ** 2) * inv) * lab[..., None]
    g = gy[..., :, None] * gx[..., None, :]
    g[g < _CUT] = 0.0
    heatmaps = np.zeros((19, h, w), dtype=np.float32)
    if len(k):
        heatmaps[:-1] = g.max(axis=0)
    heatmaps[-1] = 1.0 - heatmaps[:-1].max(axis=0)

    limb_a = np.array([a for a, _ in OPENPOSE_LIMBS])
    limb_b = np.array([b for _, b in OPENPOSE_LIMBS])
    pafs = np.zeros((38, h, w), dtype=np.float32)
    if len(k):
        a = codec.to_map(op[:, limb_a, :2])
        v = codec.to_map(op[:, limb_b, :2]) - a
        length = np.sqrt((v * v).sum(axis=-1))
        valid = lab[:, limb_a] & lab[:, limb_b] & (length > 1e-7)
        u = v / np.where(valid, length, 1.0)[..., None]
        rx = np.arange(w, dtype=np.float64) - a[..., 0, None, None]
        ry = np.arange(h, dtype=np.float64)[:, None] - a[..., 1, None, None]
        t_raw = rx * u[..., 0, None, None] + ry * u[..., 1, None, None]
        t = np.minimum(np.maximum(t_raw, 0.0), length[..., None, None])
        dist2 = (rx * rx + ry * ry) + t * (t - 2 * t_raw)
        on = ((dist2 <= codec.paf_thickness ** 2) & valid[..., None, None]).astype(np.float64)
        count = np.maximum(on.sum(axis=0), 1.0)
        pafs[[cx for cx, _ in OPENPOSE_PAF_CHANNELS]] = np.einsum("plhw,pl->lhw", on, u[..., 0]) / count
        pafs[[cy for _, cy in OPENPOSE_PAF_CHANNELS]] = np.einsum("plhw,pl->lhw", on, u[..., 1]) / count
    return heatmaps, pafs


def _assert_bitwise_equal(actual, expected, what):
    assert actual.dtype == expected.dtype == np.float32 and actual.shape == expected.shape, what
    diff = actual.view(np.uint32) != expected.view(np.uint32)
    assert not diff.any(), f"{what}: {diff.sum()} cells differ, e.g. {np.argwhere(diff)[:3].tolist()}"


def _crowd(rng, size, n):
    """n people: random poses, jittered copies of one pose (3+ people on the same limbs and cells,
    so the PAF average sums several unit vectors) and random visibility, some points off the map."""
    w, h = size
    out = []
    for i in range(n):
        if i % 3 == 2 and out:
            p = out[-1].copy()
            p[:, :2] += rng.normal(0, 2.0, (17, 2))
        else:
            p = _person(rng.uniform(-0.1, 1.1) * w, rng.uniform(0, 1) * h, rng.uniform(0.3, 2.5) * h / 256)
        p[:, 2] = rng.choice([0, 1, 2], 17, p=[0.2, 0.2, 0.6])
        out.append(p)
    return np.stack(out) if out else np.zeros((0, 17, 3))


@pytest.mark.parametrize("size,sigma,thickness", [
    ((128, 128), 7.0, 1.0), ((368, 368), 7.0, 1.0), ((192, 256), 7.0, 1.0),
    ((64, 96), 3.5, 0.5), ((128, 96), 12.0, 2.3), ((40, 48), 7.0, 1.0),
])
def test_paf_encode_is_bit_identical_to_the_dense_reference(size, sigma, thickness):
    rng = np.random.default_rng(int(size[0] * sigma + size[1]))
    codec = PafCodec(size, stride=8, sigma=sigma, paf_thickness=thickness)
    for n in (0, 1, 2, 3, 4, 6, 9):
        people = _crowd(rng, size, n)
        heat, paf = codec.encode(people)
        ref_heat, ref_paf = _dense_encode_reference(codec, people)
        _assert_bitwise_equal(heat, ref_heat, f"heatmaps, {n} people")
        _assert_bitwise_equal(paf, ref_paf, f"PAFs, {n} people")


def test_paf_encode_bit_identical_on_cell_boundaries_and_degenerate_limbs():
    """Limbs along grid lines at exactly the thickness from cell centres, zero-length limbs, exact duplicates."""
    codec = PafCodec((128, 128), stride=8)
    shift = codec.stride / 2 - 0.5
    base = _person(64, 64)
    grid = base.copy()
    grid[:, :2] = np.round((grid[:, :2] - shift) / 8) * 8 + shift          # every point on a cell centre
    zero = base.copy()
    zero[6, :2] = zero[8, :2] = zero[10, :2] = [40.0, 40.0]                # r_sho -> r_elb -> r_wri: length 0
    shifted = grid.copy()
    shifted[:, 0] += 8.0 * codec.paf_thickness                             # exactly one thickness sideways
    for people in ([grid], [zero], [grid, grid, grid], [grid, shifted], [base, grid, zero, shifted]):
        people = np.stack(people)
        heat, paf = codec.encode(people)
        ref_heat, ref_paf = _dense_encode_reference(codec, people)
        _assert_bitwise_equal(heat, ref_heat, "heatmaps")
        _assert_bitwise_equal(paf, ref_paf, "PAFs")
    assert np.abs(codec.encode(np.stack([grid, grid, grid]))[1]).max() == pytest.approx(1.0, abs=1e-6)


def test_paf_encode_handles_people_far_outside_the_map():
    codec = PafCodec((128, 128), stride=8)
    far = np.stack([_person(-500, 64), _person(64, 2000), _person(60, 64)])
    heat, paf = codec.encode(far)
    ref_heat, ref_paf = codec.encode(far[2:])
    _assert_bitwise_equal(heat, ref_heat, "heatmaps")
    _assert_bitwise_equal(paf, ref_paf, "PAFs")


# --------------------------------------------------------------------------- keypoint conversion
def test_coco17_to_openpose18_by_name_with_the_neck_rule():
    from posekd_lib.data.keypoints import COCO_KEYPOINTS, OPENPOSE_KEYPOINTS

    side = {"r": "right", "l": "left"}
    part = {"sho": "shoulder", "elb": "elbow", "wri": "wrist", "hip": "hip", "knee": "knee", "ank": "ankle",
            "eye": "eye", "ear": "ear"}
    rng = np.random.default_rng(3)
    k = np.concatenate([rng.uniform(0, 100, (4, 17, 2)), rng.integers(0, 3, (4, 17, 1))], axis=-1)
    k[0, 5, 2], k[1, 6, 2] = 0, 0                                          # one shoulder missing
    before = k.copy()
    op = coco17_to_openpose18(k)
    assert op.shape == (4, 18, 3) and op.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(k, before)                               # input untouched
    for i, name in enumerate(OPENPOSE_KEYPOINTS):
        if name == "neck":
            continue
        coco = name if name == "nose" else f"{side[name[0]]}_{part[name[2:]]}"
        np.testing.assert_array_equal(op[:, i], k[:, COCO_KEYPOINTS.index(coco)], err_msg=name)
    neck = op[:, 1]
    np.testing.assert_array_equal(neck[:2], 0.0)                           # needs both shoulders
    both = (k[2:, 5, 2] > 0) & (k[2:, 6, 2] > 0)
    np.testing.assert_allclose(neck[2:, :2][both], ((k[2:, 5, :2] + k[2:, 6, :2]) / 2)[both])
    np.testing.assert_array_equal(neck[2:, 2][both], np.minimum(k[2:, 5, 2], k[2:, 6, 2])[both])
    op[...] = -1
    np.testing.assert_array_equal(k, before)                               # output is a copy
    np.testing.assert_array_equal(coco17_to_openpose18(k[3]), coco17_to_openpose18(k)[3])


def test_paf_encode_batch_equals_each_image_alone():
    """A batch of images with different numbers of people (none included) encodes bit for bit as
    each image alone: the padding people draw nothing and the PAF sums stay per image."""
    rng = np.random.default_rng(7)
    codec = PafCodec((128, 96), stride=8)
    images = [_crowd(rng, (128, 96), n) for n in (2, 0, 5, 1, 3)]
    heat, paf = codec.encode_batch(images)
    assert heat.shape == (5, 19, 12, 16) and paf.shape == (5, 38, 12, 16)
    for i, people in enumerate(images):
        one_heat, one_paf = codec.encode(people)
        _assert_bitwise_equal(heat[i], one_heat, f"heatmaps of image {i}")
        _assert_bitwise_equal(paf[i], one_paf, f"PAFs of image {i}")
    empty_heat, empty_paf = codec.encode_batch([])
    assert empty_heat.shape == (0, 19, 12, 16) and empty_paf.shape == (0, 38, 12, 16)


def test_find_peaks_on_noise_keeps_what_the_strongest_candidates_keep():
    """An untrained model's maps are noise with thousands of local maxima: only the strongest
    ``max_candidates`` enter the suppression, which keeps exactly the peaks the full list keeps among
    them (strongest first), so decoding stays fast; on maps with fewer candidates nothing changes."""
    codec = PafCodec((144, 112), stride=4)
    noise = np.random.default_rng(0).uniform(0.0, 1.0, (19, 112, 144)).astype(np.float32)
    capped = codec.find_peaks(noise, max_candidates=300)
    full = codec.find_peaks(noise, max_candidates=10**6)
    for c, f in zip(capped, full):
        assert 0 < len(c) <= 300 and len(f) > len(c)
        strongest = np.sort(f[:, 2])[::-1][: len(c)]
        # every capped peak is a peak of the full list, and the strongest ones agree
        assert {tuple(p) for p in c.tolist()} <= {tuple(p) for p in f.tolist()}
        np.testing.assert_array_equal(np.sort(c[:, 2])[::-1][:10], strongest[:10])
    few = np.zeros((19, 112, 144), np.float32)
    few[:, 20, 30], few[:, 60, 90], few[:, 22, 31] = 0.9, 0.5, 0.4     # the third is suppressed
    for c, f in zip(codec.find_peaks(few, max_candidates=2), codec.find_peaks(few)):
        np.testing.assert_array_equal(c, f)
        assert len(f) == 2
