# %% [markdown]
# # 03 · Logits KD: a student that imitates the teacher's heatmaps
#
# **What you will learn**
# 1. What knowledge distillation (KD) is: Hinton's soft targets, the temperature, and why a
#    teacher's *heatmaps* carry more than the ground-truth Gaussians ("dark knowledge").
# 2. FPD's heatmap loss, `(1-α)·MSE(S, GT) + α·MSE(S, T)`, derived by hand and checked against
#    the library.
# 3. The spatial-softmax KL with a temperature (each joint map as a distribution over pixels),
#    the `T²` factor, and how to pick its weight so that it neither drowns nor ignores the labels.
# 4. What to do when teacher and student work at different input or heatmap sizes — and why
#    `F.interpolate` is the wrong tool for heatmaps.
# 5. How to train a distilled student with *exactly* the baseline's budget, and read the result
#    honestly.
#
# **Prerequisites:** notebook 02 (the teacher, the students, the training recipe). Its baseline runs
# are cached under `runs/<mode>/checkpoints`; if they are missing they are trained here first.
#
# **Time:** quick ≈ 1 min · workshop ≈ 10 min on a 2-core laptop (two distilled runs; each step
# also runs the teacher) · full: hours on a GPU.

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
import torch.nn.functional as F

from posekd_lib import keypoints as kp
from posekd_lib.config import notebook_setup
from posekd_lib.experiments import budget

MODE, PATHS = notebook_setup()
BUDGET = budget(MODE)
print(BUDGET)

# %% [markdown]
# The teacher (frozen from now on), the student we distil into, and one augmented training batch to
# derive the losses on. We distil into the **SqueezeNet** student of notebook 02, the tutorial's
# student; the MobileNetV3 is an exercise.

# %%
from posekd_lib.data import dataset_splits
from posekd_lib.distill import freeze
from posekd_lib.experiments import build_student_model, example_batch
from posekd_lib.teachers import load_teacher

STUDENT = "squeezenet"
teacher, tinfo = load_teacher(mode=MODE)
freeze(teacher)
print(f"teacher: {tinfo.name}, {tinfo.params / 1e6:.2f} M params, input {tinfo.input_size}, "
      f"heatmaps {tinfo.heatmap_size}; student input {BUDGET.input_size}, heatmaps {BUDGET.heatmap_size}")

splits = dataset_splits(MODE)
batch = example_batch(MODE, batch_size=8, seed=0)          # 8 augmented training crops, as in notebook 02
student = build_student_model(STUDENT)
with torch.no_grad():
    t_hm = teacher(batch["image"])
s_hm = student(batch["image"])
print("teacher heatmaps", tuple(t_hm.shape), " student heatmaps", tuple(s_hm.shape))

# %% [markdown]
# ## 1. Why a teacher's outputs teach more than the labels
#
# Hinton, Vinyals & Dean (2015) trained a small classifier on the *soft* class probabilities of a
# big one, softened by a temperature $T$: $p_i = \exp(z_i/T) / \sum_j \exp(z_j/T)$. A label says
# "this is a 2"; the teacher says "a 2, a bit like a 7, nothing like a 4" — the relative
# probabilities of the wrong classes (*dark knowledge*) describe how the teacher generalises, and
# the student learns faster and better from them.
#
# A pose heatmap is already soft: it is a score for "the joint is here" at every pixel. The
# ground-truth map is a perfect Gaussian around the annotated point, the same shape for every joint
# and every image. The teacher's map differs where it matters:
#
# * it is **wider or weaker where the joint is ambiguous** (an occluded wrist, a blurred ankle);
# * it has **second peaks** where a joint could plausibly be (the other wrist, a left/right swap);
# * it **labels joints the annotation skipped** (unlabelled or outside the crop: the ground truth
#   gives no signal there at all).
#
# Here are the ground truth and the teacher's heatmap for a few joints of one training crop:

# %%
from posekd_lib.plotting import heatmap_overlay

i = int(torch.argmax((batch["target_weight"] > 0).sum(1)))  # the best-labelled person of the batch
joints = [kp.COCO_KEYPOINTS.index(n) for n in ("nose", "left_wrist", "right_wrist", "left_ankle")]
fig, axes = plt.subplots(2, len(joints), figsize=(2.6 * len(joints), 6.2))
for c, k in enumerate(joints):
    for r, (name, hm) in enumerate((("ground truth", batch["target"]), ("teacher", t_hm))):
        heatmap_overlay(axes[r, c], batch["image"][i], hm[i, k])
        axes[r, c].set_title(f"{name}: {kp.COCO_KEYPOINTS[k]}\npeak {hm[i, k].max():.2f}", fontsize=8)
fig.tight_layout()
labelled = batch["target_weight"][i] > 0
print(f"labelled joints in this crop: {int(labelled.sum())} of 17; "
      f"teacher's peak value on labelled {t_hm[i][labelled].amax((1, 2)).mean():.2f}, "
      f"on unlabelled {t_hm[i][~labelled].amax((1, 2)).mean() if (~labelled).any() else float('nan'):.2f}")

# %% [markdown]
# ## 2. FPD: mean squared error to the teacher's heatmaps
#
# Fast Pose Distillation (Zhang et al., CVPR 2019) adds a second MSE term, to the teacher's
# heatmaps $T^{\mathrm{t}}$, next to the usual one to the ground truth $T^{\mathrm{gt}}$:
#
# $$\mathcal{L}_{\mathrm{FPD}} = (1-\alpha)\,\mathrm{MSE}_w(S, T^{\mathrm{gt}}) + \alpha\,\mathrm{MSE}(S, T^{\mathrm{t}})$$
#
# with $\mathrm{MSE}_w$ the target-weighted joints MSE of notebook 02. The teacher term is not
# masked: the teacher also "labels" the joints the ground truth leaves out. By hand, and against the
# library (`fpd_loss`, and `LogitsKD`, the `loss_fn` object that runs the frozen teacher inside
# `fit`):

# %%
from posekd_lib.distill import LogitsKD, fpd_loss
from posekd_lib.losses import joints_mse

alpha = 0.5
tw = batch["target_weight"]
w = tw[..., None, None]
mse_gt = 0.5 * ((w * s_hm - w * batch["target"]) ** 2).mean()
mse_t = 0.5 * ((s_hm - t_hm) ** 2).mean()
fpd_inline = (1 - alpha) * mse_gt + alpha * mse_t
torch.testing.assert_close(fpd_inline, fpd_loss(s_hm, t_hm, batch["target"], tw, alpha))
torch.testing.assert_close(fpd_inline, LogitsKD(teacher, kind="mse", alpha=alpha)(s_hm, batch)["loss"])
print(f"GT term {mse_gt.item():.5f}   teacher term {mse_t.item():.5f}   FPD loss {fpd_inline.item():.5f}")

# %% [markdown]
# ## 3. Spatial-softmax KL with a temperature
#
# Hinton's recipe on heatmaps: flatten each joint's $H\times W$ map, turn it into a distribution over
# pixels with a softmax at temperature $T$, and make the student's distribution match the
# teacher's with the KL divergence:
#
# $$\mathcal{L}_{\mathrm{KL}} = T^2 \cdot \frac{1}{NK}\sum_{n,k} \sum_{p} q^{\mathrm{t}}_{nkp}\,\big(\log q^{\mathrm{t}}_{nkp} - \log q^{\mathrm{s}}_{nkp}\big),
# \qquad q_{nkp} = \mathrm{softmax}_p\big(h_{nkp} / T\big)$$
#
# The temperature decides what "soft" means. Heatmaps peak near 1 over a background near 0, so at
# $T = 1$ the softmax over 768 pixels is almost uniform (e¹ vs e⁰: the peak gets ~3× the weight of a
# background pixel) and the KL barely sees where the joint is. Lower temperatures sharpen the
# distribution around the peak:

# %%
k = joints[0]
fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
for ax, T in zip(axes, (1.0, 0.5, 0.2, 0.1)):
    q = F.softmax(t_hm[i, k].flatten() / T, dim=0).reshape(t_hm.shape[-2:])
    ax.imshow(q, cmap="viridis")
    ax.set_title(f"T = {T}: max q = {q.max():.3f}", fontsize=9)
    ax.axis("off")
fig.suptitle(f"teacher's {kp.COCO_KEYPOINTS[k]} map as a distribution over pixels", y=1.03)
fig.tight_layout()

# %% [markdown]
# By hand, checked against `spatial_kl_loss` and `LogitsKD(kind="kl")`:

# %%
from posekd_lib.distill import spatial_kl_loss

T = 0.5
log_qs = F.log_softmax(s_hm.flatten(2) / T, dim=-1)
log_qt = F.log_softmax(t_hm.flatten(2) / T, dim=-1)
kl_inline = T**2 * (log_qt.exp() * (log_qt - log_qs)).sum(-1).mean()
torch.testing.assert_close(kl_inline, spatial_kl_loss(s_hm, t_hm, temperature=T))
a_kl = 0.5
torch.testing.assert_close((1 - a_kl) * joints_mse(s_hm, batch["target"], tw) + a_kl * kl_inline,
                           LogitsKD(teacher, kind="kl", alpha=a_kl, temperature=T)(s_hm, batch)["loss"])
print(f"KL at T={T}: {kl_inline.item():.4f}  (the GT MSE is {joints_mse(s_hm, batch['target'], tw).item():.5f})")

# %% [markdown]
# **Why $T^2$?** The gradient of the KL with respect to the student's heatmap is
# $\frac{1}{T}(q^{\mathrm{s}} - q^{\mathrm{t}})$, and for soft distributions $q^{\mathrm{s}} -
# q^{\mathrm{t}}$ itself shrinks roughly like $1/T$: together ~$1/T^2$. Multiplying by $T^2$ keeps
# the gradient's size about the same across temperatures, so α need not be retuned every time $T$
# changes. Measured on this batch:

# %%
for T_ in (2.0, 1.0, 0.5):
    s = s_hm.detach().clone().requires_grad_(True)
    raw = spatial_kl_loss(s, t_hm, temperature=T_) / T_**2
    g_raw = torch.autograd.grad(raw, s)[0].norm()
    print(f"T = {T_}:  |grad| without T² {g_raw:.2e}   with T² {g_raw * T_**2:.2e}")

# %% [markdown]
# **How big should α be?** The two losses are computed differently — the KL sums over the 768
# pixels of each map, the MSE averages over all pixels — so their *values* say little. What matters
# for training is the size of each term's *gradient* on the student's heatmaps. Compare them on
# this batch:

# %%
def grad_norm(loss_fn) -> float:
    s = s_hm.detach().clone().requires_grad_(True)
    return float(torch.autograd.grad(loss_fn(s), s)[0].norm())


g_gt = grad_norm(lambda s: joints_mse(s, batch["target"], tw))
g_mse = grad_norm(lambda s: joints_mse(s, t_hm))
g_kl = grad_norm(lambda s: spatial_kl_loss(s, t_hm, temperature=T))
print(f"|grad| of the GT MSE {g_gt:.2e}, of the teacher MSE {g_mse:.2e}, of the KL (T={T}) {g_kl:.2e}")
print(f"α for the KL with gradients as large as the GT term's: ≈ {g_gt / (g_gt + g_kl):.3f}")

# %% [markdown]
# The recipe in `posekd_lib.experiments.KD_SETTINGS` picks α from this balance, not as a magic
# number: at the recipe's temperature the KL's gradient is about as large as the ground-truth
# term's, so both logits variants use α = 0.5 — half labels, half teacher. (This is measured on an
# untrained student; as it learns, all gradients shrink together.)

# %%
from posekd_lib.experiments import KD_SETTINGS

for tag in ("fpd", "kl"):
    print(tag, KD_SETTINGS[tag])

# %% [markdown]
# ## 4. When teacher and student sizes differ
#
# Here the teacher and the student share the crop (128×96) and the heatmap size (32×24), so the
# teacher simply runs on the student's batch. That is not always so: the official W48 works at
# 384×288 with 96×72 heatmaps, and a MAX78000 student (notebook 05) at its own size. Then the
# images are resized to the teacher's input (`resize_input`) and the teacher's heatmaps back to the
# student's (`resize_heatmaps`); `LogitsKD(teacher_input_size=...)` does both.
#
# The catch is *where* a resized heatmap cell sits. Our codec places cell $i$ of a stride-$s$ map
# at input pixel $i\cdot s$, so halving a map must read output cell $j$ from input cell $2j$.
# `F.interpolate(align_corners=False)` reads $2j + 0.5$ instead — half a cell off, a systematic
# shift of half a cell in every decoded joint. Check on a ground-truth map whose peak is known:

# %%
from posekd_lib.codecs import HeatmapCodec
from posekd_lib.distill import resize_heatmaps

big = HeatmapCodec(input_size=(128, 128), heatmap_size=(64, 64), sigma=2.0)
small = HeatmapCodec(input_size=(128, 128), heatmap_size=(32, 32), sigma=1.0)
joint = np.array([[[60.0, 44.0, 2.0]]])                       # one joint at input pixel (60, 44)
hm_big = torch.from_numpy(big.encode(joint)[0]).float()       # (1, 1, 64, 64), peak on cell (30, 22)
ours = resize_heatmaps(hm_big, (32, 32))
naive = F.interpolate(hm_big, size=(32, 32), mode="bilinear", align_corners=False)
for name, hm in (("resize_heatmaps", ours), ("F.interpolate", naive)):
    cells, _ = small.decode(hm, method="dark")                   # sub-pixel decoding, in heatmap cells
    xy = cells[0, 0].numpy() * 128 / 32                          # cells -> input pixels
    print(f"{name:16s} decodes the joint at {np.round(xy, 2)} (true: [60. 44.])")
torch.testing.assert_close(ours, torch.from_numpy(small.encode(joint)[0]).float(), atol=1e-6, rtol=0)

# %% [markdown]
# `resize_heatmaps` gives exactly the map the codec draws at the smaller size; `F.interpolate`
# moves every joint by half a cell of the larger map (a pixel here, more for bigger strides) — a
# systematic shift the student would learn, and which costs AP at strict OKS thresholds.

# %% [markdown]
# ## 5. Training the distilled students
#
# The comparison is only fair at **the same budget as the baseline**: same steps, batch size,
# learning rate, augmentation, seed and data — only the loss changes. `train_student` guarantees it
# (one recipe, `BUDGET`), and caches each run under its own tag. The baseline comes from notebook
# 02's cache.

# %%
from posekd_lib.experiments import kd_recipe, train_student

baseline = train_student(STUDENT, mode=MODE, seed=0, tag="baseline")
runs = {"baseline": baseline}
for tag in ("fpd", "kl"):
    runs[tag] = train_student(STUDENT, mode=MODE, seed=0, tag=tag, kd=kd_recipe(tag, teacher, STUDENT, MODE))
for tag, run in runs.items():
    m = run.metrics
    print(f"{tag:9s} AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  PCK@0.2 {m['PCK@0.2']:.3f}  "
          f"train {run.row['train_time_s']} s")

# %% [markdown]
# The loss components of the distilled runs: the ground-truth term (`gt`, the same quantity the
# baseline minimises, so the curves are comparable) and the KD term (`kd`).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for tag, run in runs.items():
    h = run.history
    if h is None or not h.step:
        continue
    axes[0].plot(h.step, h.losses.get("gt", h.losses["loss"]), label=tag)
    if "kd" in h.losses:
        axes[1].plot(h.step, h.losses["kd"], label=tag)
axes[0].set(xlabel="step", ylabel="GT joints MSE", yscale="log", title="ground-truth term")
axes[1].set(xlabel="step", ylabel="KD term", yscale="log", title="distillation term (own scale per run)")
for ax in axes:
    ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 6. How much of the gap did KD close?
#
# The measure of success: the fraction of the teacher–baseline AP gap a distilled student closes,
# $(\mathrm{AP}_{\mathrm{KD}} - \mathrm{AP}_{\mathrm{base}}) / (\mathrm{AP}_{\mathrm{teacher}} -
# \mathrm{AP}_{\mathrm{base}})$. (One seed here; `benchmarks/bench_kd.py` repeats it over seeds and
# reports the spread — differences of a few tenths of an AP point are within seed noise.)

# %%
from posekd_lib.experiments import evaluate_teacher

teacher_run = evaluate_teacher(MODE)
t_ap, b_ap = teacher_run.metrics["AP"], baseline.metrics["AP"]
print(f"teacher AP {t_ap:.3f}   baseline AP {b_ap:.3f}   gap {t_ap - b_ap:+.3f}")
for tag in ("fpd", "kl"):
    ap = runs[tag].metrics["AP"]
    closed = (ap - b_ap) / (t_ap - b_ap) if t_ap > b_ap else float("nan")
    print(f"{tag:4s} AP {ap:.3f}  ({ap - b_ap:+.3f} vs baseline): {100 * closed:.0f} % of the gap closed")

fig, ax = plt.subplots(figsize=(6, 3.2))
names = ["teacher", *runs]
aps = [t_ap, *(r.metrics["AP"] for r in runs.values())]
pcks = [teacher_run.metrics["PCK@0.2"], *(r.metrics["PCK@0.2"] for r in runs.values())]
x = np.arange(len(names))
ax.bar(x - 0.2, aps, 0.4, label="AP")
ax.bar(x + 0.2, pcks, 0.4, label="PCK@0.2")
ax.set_xticks(x, names)
ax.set(title=f"{STUDENT}: baseline vs logits KD (same budget)")
ax.legend()
fig.tight_layout()

# %% [markdown]
# **Reading the result.** See the README's results table and `benchmarks/bench_kd.py` for the
# same comparison over two seeds. Look at where the gain comes from: AP50 (finding the joint at
# all) or AP75 (placing it precisely), and PCK.

# %%
cols = ["AP", "AP50", "AP75", "APm", "APl", "AR", "PCK@0.2"]
print(f"{'':10s}" + "".join(f"{c:>9s}" for c in cols))
for tag, m in (("teacher", teacher_run.metrics), *((t, r.metrics) for t, r in runs.items())):
    print(f"{tag:10s}" + "".join(f"{m[c]:9.3f}" for c in cols))

# %% [markdown]
# ## 7. Exercises
#
# Solutions: `notebooks/solutions/03_logits_kd_solutions.py`.
#
# 1. **Temperature.** Train the KL variant at T = 1 and T = 0.2 (use `kd_recipe("kl", teacher,
#    STUDENT, MODE, temperature=...)` and a new `tag` each). Which works best, and how does it
#    relate to the sharpness plot of section 3?
# 2. **DWPose's decay.** Train FPD with `schedule="linear_decay"` (the KD weight falls from α to 0
#    over training, so the student ends on the ground truth alone). Better or worse than constant?
# 3. **α sweep.** FPD with α = 0.25, 0.5, 0.9. What happens at α close to 1, when the labels are
#    nearly ignored?
# 4. **A teacher at another size.** Pretend the teacher needs 192×256 crops: build
#    `LogitsKD(teacher, teacher_input_size=(192, 256))` and run it on `batch`. Check the shape of
#    its teacher heatmaps, and compare them with the ones from the student's own crop size.
# 5. **The other student.** Distil into `"mobilenetv3"` with the best setting. Does the smaller
#    student gain more or less?
