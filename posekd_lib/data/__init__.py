"""Data: the embedded dataset and its synthesizer (``synth``), COCO loading and person crops
(``datasets``), augmentation (``augment``, ``transforms``), image checks (``images``), keypoint
orders (``keypoints``), heatmap and PAF codecs (``codecs``), YOLO-pose labels (``yolo``) and the
MAX78000 camera's sample data (``device_data``). Imports nothing from the layers above it."""
