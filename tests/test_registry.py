"""The models table: every entry builds, its head gives what the entry says, the other tables read it."""
import pytest
import torch

from posekd_lib.train import experiments
from posekd_lib.models import registry
from posekd_lib.runs import runconfig as rc


@pytest.mark.parametrize("name", sorted(registry.MODELS))
def test_every_model_builds_and_outputs_what_its_entry_says(name):
    entry = registry.model_entry(name)
    model = entry.build().eval()
    w, h = (96, 128) if entry.family != registry.MCU_BOTTOMUP else model.input_size
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w))
    out = out if torch.is_tensor(out) else out[0]
    channels = 19 + 38 if entry.family == registry.MCU_BOTTOMUP else 17
    assert out.shape[1] == channels and str(channels if channels == 17 else 19) in entry.outputs
    mcu = entry.family in (registry.MCU_TOPDOWN, registry.MCU_BOTTOMUP)
    assert entry.qat == mcu == (name in rc.MCU_STUDENTS)
    assert (entry.variants() is None) == (not mcu)


def test_the_other_tables_are_read_from_the_registry():
    assert experiments.STUDENTS == {n: (e.base, e.defaults) for n, e in registry.MODELS.items()
                                    if e.family == registry.TOPDOWN}
    assert rc.TEACHER_MODEL == "hrnet"
    assert (rc.AI8X_STUDENT, rc.BOTTOM_UP_STUDENT) == ("ai85posenet", "ai85bottomup")
    assert experiments.build_student_model("mobilenetv3_os16").head.in_channels > 0
    with pytest.raises(KeyError, match=r"unknown model 'resnet'; choose one of \['ai85bottomup'"):
        registry.model_entry("resnet")
