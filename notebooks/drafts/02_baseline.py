# %% [markdown]
# # 02 · Baseline: an HRNet teacher and two small students trained on ground truth
#
# **What you will learn**
# 1. What HRNet is, and why a high-resolution network makes a good *teacher*; how big it is next to
#    the students we want to deploy.
# 2. Two small *students*: a SqueezeNet and a MobileNetV3 backbone, each with an upsampling neck and
#    a heatmap head.
# 3. The training loss, derived by hand: HRNet's target-weighted joints MSE (and Adaptive Wing), and
#    how unlabelled keypoints are masked out.
# 4. How to train both students on ground truth only, read their training curves, and evaluate them
#    with COCO AP (`pycocotools.COCOeval`) and PCK@0.2.
# 5. How to look at the predictions side by side and in FiftyOne, and what limits a small model.
#
# This is the **baseline** of the series: every distillation result in notebooks 03–05 is measured
# against the students trained here.
#
# **Prerequisites:** notebook 01 (COCO keypoints, heatmaps, the top-down pipeline). It does not have
# to have been run: everything here is rebuilt (and cached) when missing.
#
# **Time:** quick mode ≈ 1 min · workshop mode ≈ 8–10 min on a 2-core laptop the first time (both
# students train), ≈ 1 min afterwards (runs are cached) · full mode: the students train on real
# COCO on a GPU (hours), and the teacher is the official HRNet-W48 checkpoint you provide.

# %% [markdown]
# ## 0. Setup

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
sys.path.insert(0, str(next(p for p in (HERE, *HERE.parents) if (p / "posekd_lib").is_dir())))  # the repo

import matplotlib.pyplot as plt
import numpy as np
import torch

from posekd_lib import keypoints as kp
from posekd_lib.config import notebook_setup
from posekd_lib.experiments import budget

MODE, PATHS = notebook_setup()
BUDGET = budget(MODE)
print(BUDGET)

# %% [markdown]
# `BUDGET` is this mode's recipe, shared by notebooks 02–05 and `benchmarks/`: the crop size
# (`input_size`, width × height), the heatmap size, the Gaussian σ of the targets, the batch size and
# the number of training steps. In quick and workshop mode the crop is 128×96 pixels with 32×24
# heatmaps — small enough to train on a laptop CPU in minutes, and the size the demo teacher was
# trained at.

# %% [markdown]
# ## 1. The teacher: HRNet
#
# Most networks for classification shrink the image step by step and then, for a dense task like
# pose, blow it up again (hourglass, SimpleBaseline). **HRNet** (Sun et al., CVPR 2019) instead keeps
# a **high-resolution branch at ¼ of the input for the whole depth** and adds lower-resolution
# branches (½, ¼, ⅛ of that) in parallel, stage by stage. After every module the branches exchange
# information: each one receives the sum of all others, upsampled (1×1 conv + nearest upsampling)
# or downsampled (strided 3×3 convs). The heatmaps come from the high-resolution branch through one
# 1×1 conv. Precise location and global context live side by side, which is why HRNet became the
# standard top-down pose model — and a natural teacher.
#
# | stage | branches | what it does |
# | --- | --- | --- |
# | stem | 1 | two stride-2 3×3 convs: 1/4 resolution |
# | `layer1` | 1 | 4 bottleneck blocks |
# | `stage2`, `stage3`, `stage4` | 2, 3, 4 | 1, 4, 3 modules of 4 basic blocks per branch + fusion |
# | `final_layer` | – | 1×1 conv → 17 heatmaps |
#
# The name gives the width of the high-resolution branch and the input crop: **W32 256×192** has
# 28.5 M parameters and 74.4 AP on COCO val; **W48 384×288** has 63.6 M and 76.3 AP. In `full` mode
# the teacher is that W48 (the official checkpoint, loaded strictly). For the laptop modes the repo
# ships a **demo teacher**: the same architecture at width 8 with a narrower stem, at 128×96,
# trained on the embedded dataset by `scripts/train_teacher.py` (its card records the command,
# seed and validation AP).

# %%
from posekd_lib.teachers import load_teacher

teacher, tinfo = load_teacher(mode=MODE)
print(tinfo)
print(f"weights: {tinfo.weights.name}, {tinfo.params / 1e6:.2f} M parameters, "
      f"validation AP on its card: {tinfo.val_ap}")
for name, child in teacher.named_children():
    n = sum(p.numel() for p in child.parameters())
    if n:
        print(f"  {name:14s} {n / 1e3:8.1f} k parameters")

# %% [markdown]
# The teacher maps a person crop to 17 heatmaps at ¼ resolution. Here it is on one validation person
# (crop prepared exactly as in notebook 01; `eval()` mode, so BatchNorm uses its running statistics):

# %%
from posekd_lib.data import TopDownDataset, dataset_splits
from posekd_lib.plotting import heatmap_grid

splits = dataset_splits(MODE)
val_ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, BUDGET.input_size, BUDGET.heatmap_size,
                        BUDGET.sigma)
areas = np.array([s["area"] for s in val_ds.samples])
n_labelled = np.array([(s["joints"][:, 2] > 0).sum() for s in val_ds.samples])
person = int(np.argmax(areas * (n_labelled >= min(12, n_labelled.max()))))  # a large, well-labelled person

teacher_view = TopDownDataset(splits.val.ann_file, splits.val.img_dir, tinfo.input_size, tinfo.heatmap_size,
                              tinfo.sigma)[person]
with torch.no_grad():
    teacher_hm = teacher(teacher_view["image"][None])[0]
print("input", tuple(teacher_view["image"].shape), "→ heatmaps", tuple(teacher_hm.shape))
fig = heatmap_grid(teacher_hm, kp.COCO_KEYPOINTS, img=teacher_view["image"])

# %% [markdown]
# ## 2. The students
#
# A student is what we want to run on a small device. Both students here have the same three named
# parts (`posekd_lib.models.PoseNet`), so later notebooks can hook their features:
#
# * **backbone** — an ImageNet-style feature extractor, here trained from scratch (no downloads):
#   * *SqueezeNet 1.1*: "fire" modules (a 1×1 squeeze conv, then parallel 1×1 and 3×3 expand convs)
#     — few parameters, plain convolutions, stride 16;
#   * *MobileNetV3-Small*: inverted residuals with depthwise 3×3/5×5 convs, squeeze-and-excitation
#     and hard-swish — very few multiply-accumulates (MACs), stride 32;
# * **neck** — back up to stride 4: bilinear upsampling + 3×3 convs (SqueezeNet) or 4×4 transposed
#   convs (MobileNetV3, as in SimpleBaseline);
# * **head** — one conv to 17 heatmaps, the same size as the teacher's.

# %%
from posekd_lib.experiments import build_student_model
from posekd_lib.models import complexity

STUDENTS = ("squeezenet", "mobilenetv3")
x = torch.zeros(1, 3, BUDGET.input_size[1], BUDGET.input_size[0])
sizes = {"teacher": complexity(teacher, tinfo.input_size)}
for name in STUDENTS:
    net = build_student_model(name).eval()
    with torch.no_grad():
        feats = net.backbone(x)
        out = net(x)
    assert tuple(out.shape[-2:]) == (BUDGET.heatmap_size[1], BUDGET.heatmap_size[0])
    print(f"{name:12s} backbone → {tuple(feats.shape[1:])}, heatmaps {tuple(out.shape[1:])}")
    sizes[name] = complexity(net, BUDGET.input_size)
for name, c in sizes.items():
    print(f"{name:12s} {c['params'] / 1e6:6.2f} M params  {c['macs'] / 1e6:7.1f} M MACs  {c['int8_kb']:7.0f} kB as int8")

# %% [markdown]
# The demo teacher is itself tiny (the official W48 is ~35× bigger, 40–70× the students), yet its high-resolution design
# costs many MACs per parameter. The MobileNetV3 student needs far fewer MACs than either, the
# SqueezeNet student far fewer parameters than the MobileNetV3: *size* and *compute* are different
# budgets. (A MAX78000 holds 432 kB of int8 weights: neither student fits yet — that is the subject
# of a later notebook.)

# %% [markdown]
# ## 3. The loss
#
# The target for joint $k$ of person $n$ is the Gaussian heatmap $T_{nk}$ from notebook 01, and
# $w_{nk}$ its **target weight**: 1 when the keypoint is labelled, 0 when not. HRNet trains with a
# weighted mean squared error over all $N$ persons, $K$ joints and $H\times W$ pixels:
#
# $$\mathcal{L}_{\mathrm{MSE}} = \frac{1}{N K H W}\sum_{n,k,y,x} \tfrac12\,\big(w_{nk}\,P_{nky x} - w_{nk}\,T_{nkyx}\big)^2$$
#
# Let us compute it by hand on one training batch and an untrained student, and check it against the
# library's `joints_mse`:

# %%
from posekd_lib.losses import joints_mse

train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, BUDGET.input_size, BUDGET.heatmap_size,
                          BUDGET.sigma, train=True)
torch.manual_seed(0)
batch = next(iter(torch.utils.data.DataLoader(train_ds, batch_size=8, shuffle=True)))
student = build_student_model("squeezenet")
pred = student(batch["image"])
target, tw = batch["target"], batch["target_weight"]            # (8, 17, h, w), (8, 17)

w = tw.reshape(*tw.shape[:2], 1, 1)
mse_inline = 0.5 * ((w * pred - w * target) ** 2).sum() / pred.numel()
torch.testing.assert_close(mse_inline, joints_mse(pred, target, tw))
print(f"joints MSE = {mse_inline.item():.5f}; labelled joints in this batch: {int((tw > 0).sum())} of {tw.numel()}")

# %% [markdown]
# **Masking.** A keypoint that is not labelled (outside the image, or simply not annotated) has
# $w = 0$: whatever the network predicts there costs nothing, so it is never punished for finding a
# joint the annotators skipped. Pretend the first person's left wrist was not labelled and change
# the prediction there — the loss does not move; change a labelled joint and it does:

# %%
wrist = kp.COCO_KEYPOINTS.index("left_wrist")
masked = tw.clone()
masked[0, wrist] = 0
nudged = pred.detach().clone()
nudged[0, wrist] += 1.0
base = joints_mse(pred.detach(), target, masked)
torch.testing.assert_close(joints_mse(nudged, target, masked), base)
labelled_joint = int(torch.nonzero(masked[0] > 0)[0])
nudged2 = pred.detach().clone()
nudged2[0, labelled_joint] += 1.0
print(f"masked wrist nudged: {joints_mse(nudged, target, masked).item():.5f} (unchanged); "
      f"labelled {kp.COCO_KEYPOINTS[labelled_joint]} nudged: {joints_mse(nudged2, target, masked).item():.5f}")

# %% [markdown]
# Note that masked joints still count in the denominator $NKHW$: a batch with many unlabelled
# joints gives a smaller loss (and smaller gradients) — exactly as the official code does.
#
# **Adaptive Wing.** The MSE barely cares about small errors: most pixels are background
# ($T \approx 0$) and the few foreground pixels carry little weight. The Adaptive Wing loss
# (Wang et al., ICCV 2019) is log-shaped for small errors, with an exponent that depends on the
# target, so errors *on* the Gaussian (target near 1) stay steep near zero while background errors
# flatten out. With $d = |T - P|$ and $p = \alpha - T$:
#
# $$\mathrm{AWing}(d) = \begin{cases}\omega \ln\!\big(1 + (d/\epsilon)^{p}\big) & d < \theta\\ A d - C & \text{otherwise}\end{cases}$$
#
# ($A$ and $C$ make both pieces meet with the same value and slope at $\theta$.) The library averages
# it only over the labelled joints, so masking does not shrink it:

# %%
from posekd_lib.losses import adaptive_wing, adaptive_wing_map

omega, theta, eps, alpha = 14.0, 0.5, 1.0, 2.1
p = pred.detach()
d = (target - p).abs()
pw = alpha - target
A = omega / (1 + (theta / eps) ** pw) * pw * (theta / eps) ** (pw - 1) / eps
C = theta * A - omega * torch.log1p((theta / eps) ** pw)
awing_inline = torch.where(d < theta, omega * torch.log1p((d / eps) ** pw), A * d - C)
torch.testing.assert_close(awing_inline, adaptive_wing_map(p, target))
used = (w > 0).sum() * p.shape[2] * p.shape[3]
torch.testing.assert_close((awing_inline * w).sum() / used, adaptive_wing(p, target, tw))

err = torch.linspace(0, 1, 201)
fig, ax = plt.subplots(figsize=(6, 3.2))
for t in (0.0, 1.0):
    ax.plot(err, adaptive_wing_map(torch.full_like(err, t) - err * (1 if t else -1), torch.full_like(err, t)),
            label=f"AWing, target {t:.0f}")
ax.plot(err, 0.5 * err**2 * 100, "k--", label="0.5·d² (×100)")
ax.set(xlabel="|error| d", ylabel="loss per pixel")
ax.legend()
fig.tight_layout()

# %% [markdown]
# The baseline below uses HRNet's MSE; Adaptive Wing is one of the exercises.
#
# ## 4. Training both students on ground truth
#
# `train_student` (in `posekd_lib.experiments`) is the recipe shared with the distillation notebooks:
# the training persons with HRNet's augmentation (scale, rotation, flip, half body, colour), Adam,
# a cosine learning-rate schedule, `BUDGET.steps` steps of `BUDGET.batch_size` crops, the joints MSE.
# It then evaluates the final weights on the validation split and writes a row to the results table.
#
# Runs are **cached** under `PATHS.checkpoints` by name (`baseline_squeezenet_s0`, …): running this
# cell again — or the next notebook — loads the finished run instead of training it again, and an
# interrupted run resumes from its last checkpoint.

# %%
from posekd_lib.experiments import train_student

runs = {name: train_student(name, mode=MODE, seed=0, tag="baseline") for name in STUDENTS}
for name, run in runs.items():
    print(f"{name:12s} {run.row['steps']} steps in {run.row['train_time_s']} s  →  AP {run.metrics['AP']:.3f}")

# %% [markdown]
# The training curves: the loss (logged every few steps, averaged over that interval) against the
# step. It falls fast at first — the network learns to predict near-zero background everywhere —
# then slowly, as it learns *where* the joints are.

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, run in runs.items():
    h = run.history
    ax.plot(h.step, h.losses["loss"], marker="o" if len(h.step) < 10 else None, label=name)
ax.set(xlabel="step", ylabel="joints MSE", yscale="log", title="training loss (ground truth only)")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 5. Evaluation: COCO AP and PCK
#
# Each validation person is cropped from its ground-truth box, the model runs on the crop **and on
# its mirror image** (flip test: the flipped heatmaps are flipped back, left/right swapped, and
# averaged in), the heatmaps are decoded and mapped back to the image. `pycocotools.COCOeval` then
# matches predictions to people by OKS (notebook 01) and reports:
#
# * **AP** — precision averaged over recall and over OKS thresholds 0.50, 0.55, …, 0.95;
# * **AP50 / AP75** — at one loose / strict threshold;
# * **APm / APl** — medium (32² – 96² px²) and large (> 96² px²) persons only;
# * **AR** — recall averaged over the same thresholds.
#
# Here is the full COCOeval printout for the MobileNetV3 student (the numbers are exactly those of
# `run.metrics`):

# %%
from posekd_lib.evaluation import coco_evaluate

m = coco_evaluate(splits.val.ann_file, runs["mobilenetv3"].results, verbose=True)
torch.testing.assert_close(m["AP"], runs["mobilenetv3"].metrics["AP"])

# %% [markdown]
# **PCK@0.2** is simpler and easier to read: the fraction of labelled keypoints predicted within
# 0.2 × the person's size (the longer side of its box). Derived by hand from the stored results and
# checked against what `train_student` recorded:

# %%
gt_joints = np.stack([s["joints"] for s in val_ds.samples])               # (P, 17, 3), COCO visibility
gt_size = np.stack([s["box"] for s in val_ds.samples])[:, 2:].max(1)      # (P,)
labelled = gt_joints[..., 2] > 0


def keypoints_of(results) -> np.ndarray:
    """COCO results (one per validation person, in dataset order) as (P, 17, 3)."""
    return np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)


def pck_hits(results, thr: float = 0.2) -> np.ndarray:
    dist = np.linalg.norm(keypoints_of(results)[..., :2] - gt_joints[..., :2], axis=-1)
    return dist <= thr * gt_size[:, None]


for name, run in runs.items():
    pck_inline = pck_hits(run.results)[labelled].mean()
    torch.testing.assert_close(float(pck_inline), run.metrics["PCK@0.2"])
    print(f"{name:12s} PCK@0.2 = {pck_inline:.3f}")

# %% [markdown]
# The teacher, evaluated the same way (cached per weights file):

# %%
from posekd_lib.experiments import evaluate_teacher

teacher_run = evaluate_teacher(MODE)
print({k: round(v, 3) for k, v in teacher_run.metrics.items()})

# %% [markdown]
# ### The results table
#
# Every notebook adds its rows to one CSV per mode (`PATHS.results_csv`); a row is replaced when the
# same (model, setting) runs again. Here are the teacher and the baselines:

# %%
from posekd_lib.evaluation import ResultsTable

table = ResultsTable(PATHS.results_csv).df()
cols = ["model", "setting", "AP", "AP50", "AP75", "APm", "APl", "AR", "PCK@0.2", "params", "MACs",
        "int8_kB", "train_time_s", "steps"]
baseline_table = table[table.setting.isin(["teacher", "baseline"])][cols].reset_index(drop=True)
baseline_table.round(3)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for _, r in baseline_table.iterrows():
    ax.scatter(r["MACs"] / 1e6, r["AP"], s=20 + r["params"] / 2e4, label=f"{r['model']} ({r['params'] / 1e6:.1f} M)")
ax.set(xlabel="M MACs per crop", ylabel="COCO AP (val)", title="accuracy vs compute (marker size: parameters)")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## 6. Predictions side by side
#
# The results are in the order of the validation persons, so the same index is the same person for
# every model. A few large people, ground truth first (points with a heatmap peak below 0.1 are not
# drawn: a model that is unsure of a joint shows no point there):

# %%
from posekd_lib.data import read_rgb
from posekd_lib.plotting import compare_models

preds = {"teacher": keypoints_of(teacher_run.results), **{n: keypoints_of(r.results) for n, r in runs.items()}}
images = {img["id"]: img for img in val_ds.coco["images"]}
for i in np.argsort(-areas * (n_labelled >= min(10, n_labelled.max())))[:3]:
    s = val_ds.samples[i]
    rgb = read_rgb(Path(splits.val.img_dir) / images[s["image_id"]]["file_name"])
    fig = compare_models(rgb, {n: p[i] for n, p in preds.items()}, gt=s["joints"], score_thr=0.1)
    fig.suptitle(f"validation person {i} (image {s['image_id']})", y=1.02)

# %% [markdown]
# ## 7. Finding failures in FiftyOne
#
# We add each model's predictions to the validation dataset of notebook 01 as a keypoint field,
# matched to the ground truth as COCOeval does; each sample gets `<field>_oks`, the mean OKS over its
# people. Two views are then one line each: the images where the student does worst, and the images
# where the teacher beats the student by a wide margin — the cases distillation should help with.

# %%
from posekd_lib.inspect_fo import a_beats_b, add_predictions, launch_app, mode_dataset, worst_samples

ds = mode_dataset(splits.val, MODE)   # notebook 01's validation dataset (built here if missing)
fields = {"teacher": teacher_run.results, **{f"baseline_{n}": r.results for n, r in runs.items()}}
for field, results in fields.items():
    print(field, add_predictions(ds, results, field, splits.val.ann_file))

# %%
worst = worst_samples(ds, "baseline_mobilenetv3", n=8)
print("worst images for the MobileNetV3 baseline (mean OKS):",
      [(cid, round(o, 2)) for cid, o in zip(worst.values("coco_id"), worst.values("baseline_mobilenetv3_oks"))])
gap = a_beats_b(ds, "teacher", "baseline_mobilenetv3", margin=0.2)
print(f"{len(gap)} of {len(ds)} images where the teacher's mean OKS is > 0.2 above the student's")

# %% [markdown]
# Open the App to browse them (only when you run this notebook yourself; skipped in headless and CI
# runs). Try the `gap` view with the `teacher` and `baseline_mobilenetv3` fields side by side.

# %%
session = launch_app(gap if len(gap) else ds)

# %% [markdown]
# ## 8. What limits a small model?
#
# Three measurements, each pointing at one limit.
#
# **Which joints are hard?** PCK per keypoint: the face and shoulders are easy (distinctive, rarely
# hidden), wrists and ankles are hard (small, fast-moving, often occluded) — and the gap between the
# teacher and the students is widest there.

# %%
hits = {n: pck_hits(r) for n, r in {"teacher": teacher_run.results, **{n: r.results for n, r in runs.items()}}.items()}
per_joint = {n: np.array([h[:, k][labelled[:, k]].mean() if labelled[:, k].any() else np.nan for k in range(17)])
             for n, h in hits.items()}
fig, ax = plt.subplots(figsize=(11, 3.5))
width = 0.8 / len(per_joint)
for j, (n, v) in enumerate(per_joint.items()):
    ax.bar(np.arange(17) + j * width, v, width, label=n)
ax.set_xticks(np.arange(17) + 0.4 - width / 2, kp.COCO_KEYPOINTS, rotation=60, ha="right", fontsize=8)
ax.set(ylabel="PCK@0.2", title="per-keypoint PCK on the validation persons")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# **Occlusion.** The annotation says which labelled points are hidden (v = 1): their position must be
# *inferred* from the rest of the body, which needs context — exactly what a small network with a
# small receptive field and few channels is short of.
#
# **Resolution.** At 128×96 pixels a wrist is a few pixels wide and one heatmap cell covers 4×4
# pixels; APm vs APl shows how much worse small people fare.

# %%
visible, occluded = gt_joints[..., 2] == 2, gt_joints[..., 2] == 1
for n, h in hits.items():
    m_ = teacher_run.metrics if n == "teacher" else runs[n].metrics
    pv = h[visible].mean() if visible.any() else float("nan")
    po = h[occluded].mean() if occluded.any() else float("nan")
    print(f"{n:12s} PCK visible {pv:.3f}  occluded {po:.3f}   |   APm {m_['APm']:.3f}  APl {m_['APl']:.3f}")

# %% [markdown]
# **Capacity, architecture and training time.** The official W48 teacher has ~40× the parameters
# of these students; the demo teacher does not — it is about as big as they are. What it has is an
# architecture built for the task (a full-resolution branch from start to end, where the students
# squeeze the crop to 8×6 or 4×3 cells and upsample back) and a much longer training run. In
# workshop mode the students train from scratch for ~1.6 epochs: part of the gap below is *training
# budget*, not the network — more steps (or ImageNet weights, when available offline) close some of
# it. Keep that in mind when comparing: notebooks 03–04 give the distilled students exactly the same
# budget as these baselines, so *their* comparison is fair.
#
# The gap that remains at equal budget is what distillation tries to close without growing the
# student: the teacher's heatmaps carry more than the Gaussians of the labels (how sure it is, which
# other places look like a wrist, where a hidden joint probably is).

# %%
t_ap = teacher_run.metrics["AP"]
card = tinfo.card
if card.get("epochs") and card.get("train_persons"):
    print(f"teacher training: {card['epochs']} epochs x {card['train_persons']} persons = "
          f"{card['epochs'] * card['train_persons']} crops; each student: {BUDGET.steps * BUDGET.batch_size} crops")
for n, run in runs.items():
    ratio_p = sizes["teacher"]["params"] / sizes[n]["params"]
    ratio_m = sizes["teacher"]["macs"] / sizes[n]["macs"]
    print(f"{n:12s} AP {run.metrics['AP']:.3f} vs teacher {t_ap:.3f} (gap {t_ap - run.metrics['AP']:+.3f}); "
          f"teacher has {ratio_p:.1f}x the parameters and {ratio_m:.1f}x the MACs")

# %% [markdown]
# ## 9. Exercises
#
# Solutions: `notebooks/solutions/02_baseline_solutions.py`.
#
# 1. **A lighter MobileNetV3.** Train `"mobilenetv3_os16"` (the backbone cut at stride 16, two
#    deconvs instead of three) with `train_student`. Compare AP, MACs and training time with the
#    stride-32 version. Why might the lighter one be *as accurate* at 128×96?
# 2. **Adaptive Wing.** Train the SqueezeNet student with `loss="awing"` (use `tag="awing"`, so it
#    does not collide with the cached baseline). Does AP change? Look at AP75 in particular.
# 3. **Masking and scale.** On the batch of section 3, mask more and more joints (set their target
#    weight to 0) and plot `joints_mse` and `adaptive_wing` against the number masked. Which one
#    shrinks, and what does that do to the effective learning rate?
# 4. **What does the flip test buy?** Evaluate both baselines with `evaluate_topdown(...,
#    flip_test=False)` and compare AP with the cached (flip-tested) numbers.
# 5. **PCK curves.** Plot PCK against the threshold (0.05 to 0.5) for the teacher and both
#    students. Where is the gap largest — coarse errors (high threshold) or fine ones (low)?
