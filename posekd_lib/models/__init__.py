"""Models: the top-down students (``students``), the HRNet teachers (``teachers``), Lightweight
OpenPose (``lwopenpose``), the MAX78000 students on ai8x layers (``ai8x_models``) and the table of
every model a run config may name (``registry``)."""
