"""HRNet (pose_hrnet) teacher: the network, its paper configs and strict checkpoint loading.

    from hrnet_pose.configs import load_configs
    from hrnet_pose.hrnetpose_model import get_pose_net
    from hrnet_pose.checkpoint import load_pose_checkpoint

    cfg = load_configs("w48_384x288")
    model = get_pose_net(cfg, is_train=False)
    load_pose_checkpoint(model, "pose_hrnet_w48_384x288.pth")   # official model zoo file
"""
from hrnet_pose.checkpoint import load_pose_checkpoint, save_fp16_state_dict, state_dict_manifest
from hrnet_pose.configs import available_configs, load_configs
from hrnet_pose.hrnetpose_model import PoseHighResolutionNet, count_parameters, get_pose_net

__all__ = [
    "PoseHighResolutionNet", "available_configs", "count_parameters", "get_pose_net",
    "load_configs", "load_pose_checkpoint", "save_fp16_state_dict", "state_dict_manifest",
]
