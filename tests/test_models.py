import pytest
import torch
from torchvision import models as tvm

from posekd_lib.models.students import build_student, complexity, count_params, hub_weights_path

STUDENTS = [("squeezenet", {}), ("mobilenetv3", {}), ("mobilenetv3", {"output_stride": 16})]


@pytest.mark.parametrize("name,kw", STUDENTS)
@pytest.mark.parametrize("h,w", [(256, 192), (128, 96)])
def test_student_heatmaps_at_stride_4(name, kw, h, w):
    model = build_student(name, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 17, h // 4, w // 4)
    assert {"backbone", "neck", "head"} <= {n for n, _ in model.named_children()}


def test_num_joints_and_unknown_name():
    assert build_student("squeezenet", num_joints=13).head.out_channels == 13
    with pytest.raises(KeyError, match="unknown student 'resnet'"):
        build_student("resnet")


@pytest.mark.parametrize("name,weights", [("squeezenet", tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1),
                                          ("mobilenetv3", tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1)])
def test_pretrained_offline_warns_and_builds(name, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fname = hub_weights_path(weights).name
    with pytest.warns(UserWarning, match=f"starting from scratch.*put {fname} in {tmp_path / 'hub' / 'checkpoints'}"):
        model = build_student(name, pretrained=True)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)


def test_pretrained_loads_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = tvm.squeezenet1_1()
    path = hub_weights_path(tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    model = build_student("squeezenet", pretrained=True)
    for (k, v), (k_ref, v_ref) in zip(model.backbone.state_dict().items(), reference.features.state_dict().items()):
        assert k == k_ref and torch.equal(v, v_ref)


@pytest.mark.slow  # imports calflops + transformers (~5 s)
def test_complexity_matches_calflops_reference_and_hand_counts():
    ref = complexity(tvm.squeezenet1_1(), input_size=(192, 256))
    assert ref["params"] == 1_235_496
    assert ref["macs"] == pytest.approx(341e6, rel=1e-3)

    student = build_student("squeezenet")
    c = complexity(student, input_size=(192, 256))
    features = 1_235_496 - (512 * 1000 + 1000)
    neck = (512 * 128 + 2 * 128) + (128 * 64 * 9 + 2 * 64) + (64 * 32 * 9 + 2 * 32)
    head = 32 * 17 * 9 + 17
    assert c["params"] == count_params(student) == features + neck + head
    assert c["int8_kb"] == c["params"] / 1000
    # neck + head conv MACs at stride 16 (16x12), 8 (32x24) and 4 (64x48)
    neck_head_macs = 512 * 128 * 16 * 12 + 128 * 64 * 9 * 32 * 24 + (64 * 32 + 32 * 17) * 9 * 64 * 48
    assert c["macs"] - complexity(student.backbone, input_size=(192, 256))["macs"] == neck_head_macs
