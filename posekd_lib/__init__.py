"""posekd_lib: the helper library behind the posekd knowledge-distillation notebooks.

Modules follow the pipeline: keypoints (facts) -> synth (embedded dataset) -> data / codecs
(COCO path, targets) -> models -> losses / distill -> train -> evaluation -> ai8x / export.
"""
__version__ = "0.1.0"
