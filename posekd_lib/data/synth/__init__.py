"""Embedded offline pose dataset: procedural multi-person images with COCO-17 keypoints.

The series runs without COCO downloads, so its default data is generated here and written as a
standard COCO person-keypoints JSON plus JPEG files (readable by ``pycocotools``, FiftyOne's COCO
importer and ``posekd_lib.data.datasets``).

How a sample is made:

* each person is a 3D skeleton with plausible proportions and joint-angle limits, posed from a
  pose family (standing, walking, arms up, waving, sitting, bending, squatting, reaching,
  kicking, random) and turned to any yaw, so left/right is readable from the front and
  ambiguous from the back as in real photos;
* a pinhole camera projects it (foreshortening); body parts are shaded capsules rasterised
  into a z-buffer together with distractors (limb-like sticks, blobs) and occluders, over a
  cluttered textured background;
* visibility comes from that z-buffer: a keypoint is visible (2) when the front-most surface at
  its pixel belongs to its own person and lies within the local part thickness of the joint,
  occluded (1) when something nearer covers it (own body, another person, an occluder), and
  0 with ``x = y = 0`` outside the image. Face points on the far side of the head (person
  facing away) are left unlabelled (0), as COCO annotators do.

Coordinates follow pycocotools: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so a keypoint
lies on pixel ``(floor(x), floor(y))`` and ``bbox`` is ``[x0, y0, w, h]`` of the pixel mask.
Everything is deterministic from the seed; image ``i`` of a split uses
``np.random.default_rng([split_seed, i])``, so the output does not depend on the worker count.

The package, one job a module: `people` (3D people and their poses), `raster` (the z-buffered
rasteriser), `scenes` (a scene sampled and rendered) and `splits` (splits written, cached and
repaired). Import from here.
"""
from .people import (
    POSE_KINDS, sample_person, person_skeleton,
)
from .scenes import (
    DEFAULT_IMAGE_SIZE, MIN_PERSON_AREA, MIN_KEYPOINT_AREA, sample_scene, render_scene,
    render_sample,
)
from .splits import (
    SYNTH_VERSION, JPEG_QUALITY, ANN_FILE_NAME, CocoSplit, EmbeddedDataset, sizes_for_mode,
    generate_split, ensure_embedded_dataset, ensure_extra_train,
)

__all__ = [
    'POSE_KINDS', 'sample_person', 'person_skeleton', 'DEFAULT_IMAGE_SIZE', 'MIN_PERSON_AREA',
    'MIN_KEYPOINT_AREA', 'sample_scene', 'render_scene', 'render_sample', 'SYNTH_VERSION',
    'JPEG_QUALITY', 'ANN_FILE_NAME', 'CocoSplit', 'EmbeddedDataset', 'sizes_for_mode',
    'generate_split', 'ensure_embedded_dataset', 'ensure_extra_train',
]
