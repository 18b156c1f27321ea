"""The MAX78000: the ai8x layer emulation and its quantizer (``ai8x``), the chip's limits
(``hardware``), the weight and data-memory planner (``max78000``), pruning (``pruning``), ONNX
export of the top-down students (``onnx_export``) and the checkpoint / network YAML / synthesizer
export (``export``)."""
