"""The teacher cache: exact without augmentation, and its warp puts each joint where the crop moved it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from posekd_lib.data.datasets import AugConfig, TopDownDataset, dataset_splits
from posekd_lib.distill.teacher_cache import TeacherCache, cached_teacher, widen_scale


def _dataset(train: bool, aug=None, size=(48, 64), hm=(12, 16)):
    split = dataset_splits("quick").train
    return TopDownDataset(split.ann_file, split.img_dir, size, hm, 2.0, train=train, aug=aug)


def _targets_cache(ds_plain: TopDownDataset) -> TeacherCache:
    """A cache whose "teacher" output is the plain crops' ground-truth heatmaps."""
    hm = torch.stack([ds_plain[i]["target"] for i in range(len(ds_plain))]).to(torch.float16)
    s = ds_plain.samples
    return TeacherCache(hm, [x["ann_id"] for x in s], [x["center"] for x in s], [x["scale"] for x in s],
                        [ds_plain.images[x["image_id"]]["width"] for x in s], ds_plain.input_size)


def _batch(ds, n: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return next(iter(torch.utils.data.DataLoader(ds, batch_size=n, shuffle=False)))


def test_cache_without_augmentation_is_the_teachers_output():
    ds = _dataset(train=False)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    cache = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False)
    batch = _batch(ds)
    with torch.no_grad():
        live = teacher(batch["image"]).to(torch.float16).float()
    torch.testing.assert_close(cache.for_batch(batch), live, rtol=0, atol=0)


def test_a_cache_built_inside_autocast_holds_the_float_teachers_output():
    """fit builds the cache lazily at its first batch, inside bf16 autocast: it still works, and
    its values are the float teacher's, not bf16 ones."""
    ds = _dataset(train=False)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    plain = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False)
    assert inside.heatmaps.dtype == torch.float16
    torch.testing.assert_close(inside.heatmaps, plain.heatmaps, rtol=0, atol=0)
    # the mirrored crops' rows too (E13b's feature cache crashed here: float16 cat under bf16 autocast)
    plain = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False, mirrored=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False, mirrored=True)
    assert inside.mirrored.dtype == torch.float16
    torch.testing.assert_close(inside.mirrored, plain.mirrored, rtol=0, atol=0)


def test_warp_moves_each_joint_with_the_augmented_crop():
    """Warped plain-crop targets peak where the augmented crop's own targets peak (within a cell)."""
    cache = _targets_cache(_dataset(train=False))
    aug = AugConfig(scale_factor=0.3, rotation=30.0, rotation_prob=1.0, flip_prob=0.5, half_body_prob=0.0)
    ds = _dataset(train=True, aug=aug)
    batch = _batch(ds, n=32)
    assert batch["meta"]["flipped"].any() and not batch["meta"]["flipped"].all()
    warped = cache.for_batch(batch)
    target = batch["target"]
    weight = batch["target_weight"].reshape(target.shape[:2])
    w = target.shape[-1]
    # compare only joints whose peak lies well inside both maps (the warp zero-fills what the plain crop lacks)
    peak_t, peak_w = target.flatten(2).argmax(-1), warped.flatten(2).argmax(-1)
    inside = (weight > 0) & (target.flatten(2).amax(-1) > 0.9) & (warped.flatten(2).amax(-1) > 0.5)
    assert inside.sum() > 50
    dx = (peak_t % w - peak_w % w).abs()[inside]
    dy = (peak_t // w - peak_w // w).abs()[inside]
    assert (torch.maximum(dx, dy) <= 1).float().mean() > 0.97, (dx.float().mean(), dy.float().mean())


def test_output_size_and_mismatched_dataset():
    ds = _dataset(train=False)
    cache = _targets_cache(ds)
    batch = _batch(ds, n=4)
    assert cache.for_batch(batch, out_size=(6, 8)).shape == (4, 17, 8, 6)
    batch["meta"]["ann_id"] = batch["meta"]["ann_id"] + 1
    with pytest.raises(KeyError, match="another dataset"):
        cache.for_batch(batch)


def test_a_teacher_of_another_aspect_sees_a_wider_box_and_the_warp_undoes_it():
    """An "identity teacher" (its heatmaps are its input crop) at 64x80 for 48x64 students: each
    box is widened around the same centre, and warping the cached crops onto the student's plain
    crops gives back the student's own crops (up to resampling), where a stretched crop would not."""
    ds = _dataset(train=False)
    crops = lambda x: x.repeat(1, 6, 1, 1)[:, :17]                     # noqa: E731  (17 "joints": RGB x 6)
    cache = TeacherCache.build(crops, ds, input_size=(64, 80), batch_size=8, progress=False)
    student = np.stack([x["scale"] for x in ds.samples])
    np.testing.assert_allclose(cache.scales[:, 0] / cache.scales[:, 1], 0.8, rtol=1e-5)
    assert (cache.scales >= student - 1e-6).all()                      # the student's crop lies inside
    np.testing.assert_array_equal(cache.centers, np.stack([x["center"] for x in ds.samples]))
    batch = _batch(ds, n=16)
    got = cache.for_batch(batch, out_size=(48, 64), input_size=(48, 64))[:, :3]
    err = (got - batch["image"]).abs().mean()
    stretched = torch.nn.functional.interpolate(cache.heatmaps[:16, :3].float(), size=(64, 48), mode="bilinear",
                                                align_corners=False)
    same_aspect = TeacherCache.build(crops, ds, input_size=(60, 80), batch_size=8, progress=False)
    reference = (same_aspect.for_batch(batch, out_size=(48, 64), input_size=(48, 64))[:, :3] - batch["image"]).abs().mean()
    torch.testing.assert_close(err, reference, rtol=0, atol=1e-4)      # as good as a 1.25x crop of the same box
    assert (stretched - batch["image"]).abs().mean() > 2 * err         # (measured: 0.054 against 0.147)
    assert (widen_scale([1.0, 2.0], 0.8) == np.float32([1.6, 2.0])).all()
    assert (widen_scale([2.0, 2.0], 0.8) == np.float32([2.0, 2.5])).all()


def test_an_interrupted_build_resumes_from_its_partial_files(tmp_path):
    """A cache build killed midway (a session's end) keeps its rows in the partial folder, one file
    per save holding only the rows since the last; the next build runs the teacher only on the
    persons after them and equals a build in one go; the files are checked against the build and
    deleted once the cache is saved."""
    from posekd_lib.distill.teacher_cache import partial_path

    ds = _dataset(train=False)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    whole = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False, mirrored=True)
    seen = []

    def dies_after_two_batches(x):
        if len(seen) == 4:                           # two batches, each plain + mirrored
            raise KeyboardInterrupt
        seen.append(len(x))
        return teacher(x)

    path = tmp_path / "c.pt"
    partial = partial_path(path)
    with pytest.raises(KeyboardInterrupt):
        cached_teacher(path, lambda: TeacherCache.build(dies_after_two_batches, ds, batch_size=8, progress=False,
                                                        mirrored=True, partial=partial, save_every_s=0))
    files = sorted(p.name for p in partial.iterdir())
    assert files == ["rows_000000_000001.pt", "rows_000001_000002.pt"] and not path.exists()
    assert len(torch.load(partial / files[1], weights_only=False)["heatmaps"]) == 8    # its own rows only
    with pytest.raises(ValueError, match="rows_000000_000001.pt.*batch size 8.*delete"):
        TeacherCache.build(lambda x: teacher(x), ds, batch_size=4, progress=False, mirrored=True, partial=partial)
    seen.clear()
    resumed = cached_teacher(path, lambda: TeacherCache.build(lambda x: seen.append(len(x)) or teacher(x), ds,
                                                              batch_size=8, progress=False, mirrored=True,
                                                              partial=partial))
    assert sum(seen) == 2 * (len(ds) - 16)          # only the persons after the first two batches
    torch.testing.assert_close(resumed.heatmaps, whole.heatmaps, rtol=0, atol=0)
    torch.testing.assert_close(resumed.mirrored, whole.mirrored, rtol=0, atol=0)
    assert path.is_file() and not partial.exists()


def test_a_gap_in_the_partial_files_is_named(tmp_path):
    """Rows that do not follow the files before them are refused, naming the file: a build never
    fills a cache with a hole in it."""
    from posekd_lib.distill.teacher_cache import partial_path

    ds = _dataset(train=False)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    partial = partial_path(tmp_path / "c.pt")
    TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False, partial=partial, save_every_s=0)
    (partial / "rows_000001_000002.pt").unlink()
    with pytest.raises(ValueError, match="rows_000002_000003.pt: starts at batch 2.*end at batch 1"):
        TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False, partial=partial)


def test_save_load_round_trip_and_bad_file(tmp_path):
    ds = _dataset(train=False)
    built = []
    cache = cached_teacher(tmp_path / "c.pt", lambda: built.append(1) or _targets_cache(ds))
    again = cached_teacher(tmp_path / "c.pt", lambda: built.append(1) or _targets_cache(ds))
    assert built == [1]
    batch = _batch(ds, n=4)
    torch.testing.assert_close(again.for_batch(batch), cache.for_batch(batch), rtol=0, atol=0)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.pt"):
        TeacherCache.load(tmp_path / "bad.pt")


def test_logits_kd_with_a_teacher_cache_runs_no_teacher_forward():
    from posekd_lib.distill import LogitsKD

    ds = _dataset(train=False)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    student = torch.nn.Conv2d(3, 17, 4, stride=4)
    cache = TeacherCache.build(lambda x: teacher(x), ds, batch_size=8, progress=False)
    calls = []
    teacher.register_forward_pre_hook(lambda m, args: calls.append(1))
    batch = _batch(ds, n=4)
    cached, live = LogitsKD(teacher, student, cache=cache), LogitsKD(teacher, student)
    out = cached(batch["image"])
    a = cached.loss(out, batch)
    assert calls == []
    torch.testing.assert_close(a["kd"], live.loss(out, batch)["kd"], rtol=1e-3, atol=1e-6)  # float16 storage


def test_a_mirrored_cache_reads_the_teachers_answer_on_the_mirrored_crop():
    """With ``mirrored``, a mirrored training crop reads the teacher's output on the mirrored crop
    (warped by the same geometry), not the plain crop's output mirrored: for a teacher that is not
    mirror-symmetric (a random conv) the first is close to the live teacher, the second is not."""
    plain_ds = _dataset(train=False)
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 17, 4, stride=4)
    with torch.no_grad():
        cache = TeacherCache.build(lambda x: teacher(x), plain_ds, batch_size=8, progress=False, mirrored=True)
    assert cache.mirrored.shape == cache.heatmaps.shape
    flips = AugConfig(scale_factor=0.0, rotation=0.0, rotation_prob=0.0, flip_prob=1.0, half_body_prob=0.0,
                      brightness=0.0, contrast=0.0, saturation=0.0)
    batch = _batch(_dataset(train=True, aug=flips), n=16)
    assert batch["meta"]["flipped"].all()
    with torch.no_grad():
        live = teacher(batch["image"])
    own = cache.for_batch(batch)
    cache.mirrored = None                                         # the approximation: plain row, mirrored
    approx = cache.for_batch(batch)

    def rel(a):      # output column 0 sees the mirrored crop's column 0, which lies outside the plain crop
        return float(((a - live)[..., 1:] ** 2).sum() / (live[..., 1:] ** 2).sum())

    assert rel(own) < 1e-5 and rel(approx) > 0.5, (rel(own), rel(approx))


def test_logits_kd_warps_a_teacher_of_another_aspect_onto_the_students_crop():
    """LogitsKD's cached targets for a teacher of another crop aspect (the identity "teacher" above
    at 64x80 for 48x64 students) are the student's own crop: the warp is given the batch's crop
    size. (It once used the teacher's, which scaled the targets vertically by the aspects' ratio.)"""
    from posekd_lib.distill import LogitsKD
    from posekd_lib.distill.logits import resize_heatmaps

    plain = _dataset(train=False)
    crops = lambda x: x.repeat(1, 6, 1, 1)[:, :17]                     # noqa: E731
    cache = TeacherCache.build(crops, plain, input_size=(64, 80), batch_size=8, progress=False)
    kd = LogitsKD(torch.nn.Conv2d(3, 17, 1), cache=cache)
    batch = _batch(plain, n=16)
    like = torch.zeros(16, 17, 64, 48)                                  # student "heatmaps" at the crop size
    err = (kd.teacher_heatmaps(batch, like)[:, :3] - batch["image"]).abs().mean()
    wrong = resize_heatmaps(cache.for_batch(batch, input_size=(64, 80)), like)[:, :3]   # the teacher's crop size
    err_wrong = (wrong - batch["image"]).abs().mean()
    assert err < 0.08 and err < 0.6 * err_wrong, (float(err), float(err_wrong))   # (measured: 0.064, 0.166)


def test_widen_blobs_reaches_the_students_width_and_keeps_the_peak():
    """A teacher on a grid twice as fine as the student's, trained on σ 2 of its cells: its blob is
    σ 1 of the student's cells; blob_sigma=2 makes it the student's label, peak height kept."""
    from posekd_lib.data.codecs import HeatmapCodec
    from posekd_lib.distill.teacher_cache import widen_blobs

    fine = HeatmapCodec((96, 128), (48, 64), 2.0)     # the "teacher": stride 2
    coarse = HeatmapCodec((96, 128), (24, 32), 2.0)   # the student: stride 4, σ 2 cells
    joints = np.array([[[40.0, 52.0, 1.0]] * 17])
    t = torch.as_tensor(fine.encode(joints[0])[0])[None].float() * 0.7      # a teacher blob of peak 0.7
    label = torch.as_tensor(coarse.encode(joints[0])[0])[None].float()
    wide = widen_blobs(t, torch.tensor([np.sqrt(4.0 ** 2 - 2.0 ** 2)]))    # σ 2 coarse cells = 4 fine cells
    torch.testing.assert_close(wide.amax(dim=(-2, -1)), t.amax(dim=(-2, -1)))
    sampled = wide[..., ::2, ::2]                                            # fine cell 2j = coarse cell j
    torch.testing.assert_close(sampled / 0.7, label, atol=0.02, rtol=0)
    assert (t[..., ::2, ::2] / 0.7 - label).abs().max() > 0.2                # unwidened: too narrow
    torch.testing.assert_close(widen_blobs(t, torch.tensor([0.0])), t)


def test_for_batch_blob_sigma_widens_a_finer_teacher_only():
    ds = _dataset(train=False)                         # 48x64 crops, 12x16 heatmaps (stride 4)
    cache = _targets_cache(_dataset(train=False, hm=(24, 32)))               # a finer "teacher" (stride 2, σ 2)
    batch = _batch(ds, n=8)
    got = cache.for_batch(batch, out_size=(12, 16), input_size=(48, 64), blob_sigma=2.0)
    seen = batch["target_weight"].reshape(8, 17) > 0
    err = (got - batch["target"]).abs().amax(dim=(-2, -1))[seen].mean()
    plain = cache.for_batch(batch, out_size=(12, 16), input_size=(48, 64))
    err_plain = (plain - batch["target"]).abs().amax(dim=(-2, -1))[seen].mean()
    assert err < 0.25 * err_plain, (float(err), float(err_plain))   # (measured: 0.14 against 0.59; the rest is
    # the codec drawing each label at its rounded cell, which differs between the two grids)
    same = _targets_cache(ds)                                                # same grid: nothing to widen
    torch.testing.assert_close(same.for_batch(batch, blob_sigma=2.0), same.for_batch(batch))
