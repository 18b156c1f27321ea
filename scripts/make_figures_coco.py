"""Draw images/coco_skeleton.png: the 17 COCO keypoints (index + name) and the 19 limbs on a stick figure.

Used by notebook 01. Run: ``python scripts/make_figures_coco.py [--out images/coco_skeleton.png]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

REPO = Path(__file__).resolve().parent.parent

from posekd_lib.data.keypoints import COCO_KEYPOINTS
from posekd_lib.evaluation.plotting import SIDE_COLORS, draw_skeleton, keypoint_side

#: A person facing the camera (image coordinates, y down): their left side is on the image's right.
CANONICAL_POSE = {
    "nose": (0, 46), "left_eye": (11, 31), "right_eye": (-11, 31), "left_ear": (25, 40), "right_ear": (-25, 40),
    "left_shoulder": (36, 82), "right_shoulder": (-36, 82), "left_elbow": (64, 124), "right_elbow": (-64, 124),
    "left_wrist": (90, 162), "right_wrist": (-90, 162), "left_hip": (22, 188), "right_hip": (-22, 188),
    "left_knee": (26, 252), "right_knee": (-26, 252), "left_ankle": (29, 315), "right_ankle": (-29, 315),
}
#: Where each label goes (text position); face labels are pulled out to the sides with a leader line.
LABEL_AT = {
    "nose": (0, 0), "left_eye": (70, 6), "right_eye": (-70, 6), "left_ear": (85, 38), "right_ear": (-85, 38),
}


def make_figure():
    kpts = np.array([(*CANONICAL_POSE[n], 2) for n in COCO_KEYPOINTS], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 7.2))
    draw_skeleton(ax, kpts, markersize=70, linewidth=3.0)
    for i, (name, (x, y, _)) in enumerate(zip(COCO_KEYPOINTS, kpts)):
        side = keypoint_side(name)
        if name in LABEL_AT:
            tx, ty = LABEL_AT[name]
            ha = "center" if side == "center" else ("left" if side == "left" else "right")
            ax.annotate(f"{i} {name}", (x, y), xytext=(tx, ty), ha=ha, va="center", fontsize=10,
                        color=SIDE_COLORS[side],
                        arrowprops=dict(arrowstyle="-", color="0.6", lw=0.8, shrinkA=2, shrinkB=5))
        else:
            dx = 12 if side == "left" else -12
            ax.text(x + dx, y, f"{i} {name}", ha="left" if dx > 0 else "right", va="center", fontsize=10,
                    color=SIDE_COLORS[side])
    ax.set_xlim(-175, 175)
    ax.set_ylim(335, -12)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title("COCO-17 keypoints (0-based index) and the 19 skeleton limbs", fontsize=11)
    handles = [Line2D([], [], color=SIDE_COLORS[s], lw=3, marker="o", label=f"person's {s}" if s != "center" else "middle")
               for s in ("left", "right", "center")]
    handles += [Line2D([], [], color="0.3", lw=2, marker="o", ls="-", label="visible (v=2)"),
                Line2D([], [], color="0.3", lw=2, marker="o", ls="--", markerfacecolor="none", label="occluded (v=1)")]
    ax.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.1))
    ax.text(0, 334, "seen from the front: the person's left is on the image's right", ha="center",
            fontsize=9, color="0.35", style="italic")
    fig.tight_layout()
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "images" / "coco_skeleton.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig = make_figure()
    fig.savefig(args.out, dpi=120, bbox_inches="tight", facecolor="white",
                metadata={"Software": None})  # no version stamp: the PNG is reproducible
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
