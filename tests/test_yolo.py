"""YOLO-pose label conversion in both directions (STM32 model-zoo conventions)."""
import json

import numpy as np
import pytest

from posekd_lib.data.keypoints import COCO_KEYPOINTS, STM32_13_KEYPOINTS, coco17_to_stm32_13
from posekd_lib.data.yolo import coco_to_yolo, read_yolo_labels, yolo_to_coco


def _kpts(rng, box, labelled=17):
    x, y, w, h = box
    k = np.column_stack([rng.uniform(x, x + w, 17).round(2), rng.uniform(y, y + h, 17).round(2),
                         rng.choice([1, 2], 17)]).astype(float)
    k[labelled:] = 0
    return k


def _coco(tmp_path, rng):
    """4 images: one person; two people; one person + a crowd + a zero-size box; one keypoint-less person."""
    images = [{"id": i, "file_name": f"img_{i}.jpg", "width": 640, "height": 480} for i in range(1, 5)]
    anns, aid = [], 1

    def add(image_id, box, k, **kw):
        nonlocal aid
        anns.append({"id": aid, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": box,
                     "area": box[2] * box[3], "num_keypoints": int((k[:, 2] > 0).sum()),
                     "keypoints": k.reshape(-1).tolist(), **kw})
        aid += 1

    add(1, [100, 50, 200, 300], _kpts(rng, [100, 50, 200, 300]))
    add(2, [10, 20, 150, 400], _kpts(rng, [10, 20, 150, 400]))
    add(2, [300, 40, 120, 350], _kpts(rng, [300, 40, 120, 350], labelled=9))
    add(3, [50, 60, 100, 200], _kpts(rng, [50, 60, 100, 200]))
    add(3, [0, 0, 300, 300], np.zeros((17, 3)), iscrowd=1)
    add(3, [5, 5, 0, 10], _kpts(rng, [5, 5, 1, 10]))
    add(4, [400, 100, 50, 60], np.zeros((17, 3)))
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS), "skeleton": []}]}))
    return path, images, anns


def test_label_line_format(tmp_path):
    path, images, anns = _coco(tmp_path, np.random.default_rng(0))
    coco_to_yolo(path, tmp_path / "labels")
    rows = read_yolo_labels(tmp_path / "labels" / "img_1.txt")
    assert rows.shape == (1, 5 + 51)
    np.testing.assert_allclose(rows[0, :5], [0, 200 / 640, 200 / 480, 200 / 640, 300 / 480], rtol=1e-5)
    k = np.asarray(anns[0]["keypoints"]).reshape(17, 3)
    np.testing.assert_allclose(rows[0, 5::3], k[:, 0] / 640, rtol=1e-5)
    np.testing.assert_allclose(rows[0, 6::3], k[:, 1] / 480, rtol=1e-5)
    assert set(rows[0, 7::3]) == {1.0}                        # visibility becomes labelled / not


@pytest.mark.parametrize("num_keypoints", [17, 13])
@pytest.mark.parametrize("single_person", [False, True])
def test_round_trip_and_counts(tmp_path, num_keypoints, single_person):
    path, images, anns = _coco(tmp_path, np.random.default_rng(1))
    stats = coco_to_yolo(path, tmp_path / "labels", num_keypoints=num_keypoints, single_person=single_person)
    if single_person:   # image 1 and image 4 have one annotation; image 4 has no keypoint -> no file
        assert stats == {"images": 1, "persons": 1, "skipped_not_single": 2, "skipped_no_keypoints": 1}
        expected = [anns[0]]
    else:
        assert stats == {"images": 3, "persons": 4, "skipped_crowd": 1, "skipped_empty_box": 1,
                         "skipped_no_keypoints": 1}
        expected = [anns[0], anns[1], anns[2], anns[3]]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == sorted(
        f"img_{a['image_id']}.txt" for a in {a["image_id"]: a for a in expected}.values())

    back = yolo_to_coco(tmp_path / "labels", images, num_keypoints=num_keypoints)
    names = COCO_KEYPOINTS if num_keypoints == 17 else STM32_13_KEYPOINTS
    assert back["categories"][0]["keypoints"] == list(names)
    assert len(back["annotations"]) == len(expected)
    for a, b in zip(expected, back["annotations"]):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1e-3)
        k = np.asarray(a["keypoints"], float).reshape(17, 3)
        k[:, 2] = k[:, 2] > 0
        if num_keypoints == 13:
            k = coco17_to_stm32_13(k)
        kb = np.asarray(b["keypoints"]).reshape(num_keypoints, 3)
        lab = k[:, 2] > 0
        np.testing.assert_array_equal(kb[:, 2] > 0, lab)
        np.testing.assert_allclose(kb[lab, :2], k[lab, :2], atol=0.01)
        assert b["num_keypoints"] == lab.sum()


def test_13_keypoint_head_is_mean_of_labelled_face_points(tmp_path):
    k = np.zeros((17, 3))
    k[0], k[1], k[3] = [100, 40, 2], [110, 30, 1], [130, 50, 2]
    k[5:] = [200, 200, 2]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [50, 20, 200, 300], "area": 1,
           "num_keypoints": 15, "keypoints": k.reshape(-1).tolist()}
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 400, "height": 400}],
                                "annotations": [ann], "categories": [
                                    {"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS)}]}))
    coco_to_yolo(path, tmp_path / "l", num_keypoints=13)
    row = read_yolo_labels(tmp_path / "l" / "x.txt", 13)[0]
    # the zoo averages the labelled face points with equal weights (visibility reduced to 0/1 first)
    np.testing.assert_allclose(row[5:8], [340 / 3 / 400, 40 / 400, 1], rtol=1e-5)


def test_bad_labels_and_sizes_are_reported(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.1 0.1 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"a\.txt: line 1 has 7 numbers, expected 56"):
        read_yolo_labels(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="num_keypoints"):
        yolo_to_coco(tmp_path, [], num_keypoints=12)


def test_copied_images_are_checked_first(tmp_path):
    import cv2

    ann_file, _, _ = _coco(tmp_path, np.random.default_rng(0))
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    for i in range(1, 5):
        (img_dir / f"img_{i}.jpg").write_bytes(buf.tobytes())
    counts = coco_to_yolo(ann_file, tmp_path / "ok", img_dir=img_dir)
    assert sorted(p.name for p in (tmp_path / "ok").glob("*.jpg")) == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    assert counts["images"] == 3
    (img_dir / "img_2.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ValueError, match=r"img_2\.jpg \(sample 1, image id 2\): JPEG truncated"):
        coco_to_yolo(ann_file, tmp_path / "bad", img_dir=img_dir)
