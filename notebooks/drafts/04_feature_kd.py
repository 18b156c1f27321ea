# %% [markdown]
# # 04 · Feature KD: hints from inside the teacher, and the comparison of every run
#
# **What you will learn**
# 1. FitNets-style *hints*: teaching a student's intermediate features, not only its output.
# 2. How to find layers to pair: `named_modules`, shapes printed from one dummy forward.
# 3. Forward hooks that capture named intermediate outputs — and are removed cleanly afterwards.
# 4. The adapter (a 1×1 conv trained with the student, plus an exact resize) and a normalised MSE
#    whose scale does not depend on the layers you picked — derived by hand, checked against the
#    library.
# 5. The comparison of every model so far — teacher, baseline, logits KD (FPD and KL), feature KD —
#    in one table and one plot, and FiftyOne views of where KD fixed the baseline and where it did
#    not.
#
# **Prerequisites:** notebooks 02 and 03 (their runs are cached; missing ones are trained here).
#
# **Time:** quick ≈ 1 min · workshop ≈ 8 min on a 2-core laptop (one distilled run) · full: hours
# on a GPU.

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

from posekd_lib.config import notebook_setup
from posekd_lib.data import TopDownDataset, dataset_splits
from posekd_lib.distill import freeze
from posekd_lib.experiments import budget, build_student_model, example_batch
from posekd_lib.teachers import load_teacher

MODE, PATHS = notebook_setup()
BUDGET = budget(MODE)

STUDENT = "squeezenet"
teacher, tinfo = load_teacher(mode=MODE)
freeze(teacher)
splits = dataset_splits(MODE)
batch = example_batch(MODE, batch_size=8, seed=0)          # 8 augmented training crops, as in notebook 02
student = build_student_model(STUDENT)

# %% [markdown]
# ## 1. Hints: distilling what happens inside
#
# Logits KD (notebook 03) only tells the student what the answer should be. FitNets (Romero et al.,
# ICLR 2015) also gives it **hints**: an intermediate feature map of the teacher that a chosen
# student layer should be able to reproduce. The student layer gets a *dense* training signal — a
# target for every channel at every position — instead of gradients that must travel back through
# the head from 17 heatmaps.
#
# Three problems to solve: (1) pick layers whose meaning matches, (2) capture their outputs during
# the normal forward pass, (3) compare maps with different channel counts, sizes and scales.
#
# ### Picking layers
# `list_feature_shapes` runs one dummy forward and lists every named module with its output shape
# (HRNet's stages return a list: one map per resolution branch):

# %%
from posekd_lib.distill import list_feature_shapes

x_shape = (3, BUDGET.input_size[1], BUDGET.input_size[0])
print("teacher (top-level modules):")
for name, shape in list_feature_shapes(teacher, (3, tinfo.input_size[1], tinfo.input_size[0]), max_depth=1):
    print(f"  {name:12s} {shape}")
print(f"student {STUDENT} (two levels):")
for name, shape in list_feature_shapes(student, x_shape, max_depth=2):
    if name.startswith(("neck", "head")) or name in ("backbone", "backbone.12"):
        print(f"  {name:12s} {shape}")

# %% [markdown]
# A good pair has the same *role*: the student's last neck layer and HRNet's `stage4` output are
# both the features the final 1×1/3×3 conv turns into heatmaps, both at ¼ of the crop — so only the
# channel count differs. (Pairing the student's 8×6 bottleneck with an early teacher layer would ask
# a coarse, semantic map to copy a fine, low-level one.) The pair used by the recipe:

# %%
from posekd_lib.experiments import FEATURE_PAIRS, KD_SETTINGS

PAIRS = FEATURE_PAIRS[STUDENT]
print(PAIRS, KD_SETTINGS["feature"])

# %% [markdown]
# ### Capturing features with forward hooks
#
# `module.register_forward_hook(fn)` calls `fn(module, inputs, output)` after every forward of that
# module. Done by hand, it looks like this:

# %%
captured = {}
modules = dict(student.named_modules())
handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
           for name in PAIRS]
out = student(batch["image"])
for h in handles:
    h.remove()
print({k: tuple(v.shape) for k, v in captured.items()})

# %% [markdown]
# `FeatureHooks` does the same for a list of names (with an error that names the closest valid
# layers when you mistype one) and, used as a context manager, removes every hook on exit — a hook
# left behind would keep capturing (and holding memory) in every later forward:

# %%
from posekd_lib.distill import FeatureHooks

with FeatureHooks(student, list(PAIRS)) as s_hooks, FeatureHooks(teacher, list(PAIRS.values())) as t_hooks:
    s_out = student(batch["image"])
    with torch.no_grad():
        t_out = teacher(batch["image"])
    s_feat = s_hooks[next(iter(PAIRS))]
    t_feat = t_hooks[next(iter(PAIRS.values()))]
t_feat = t_feat[0] if isinstance(t_feat, (list, tuple)) else t_feat  # HRNet stage: its high-res branch
torch.testing.assert_close(s_feat, captured[next(iter(PAIRS))])
assert all(not m._forward_hooks for m in student.modules()) and all(not m._forward_hooks for m in teacher.modules())
print("student feature", tuple(s_feat.shape), " teacher feature", tuple(t_feat.shape), " hooks removed")
try:
    FeatureHooks(student, ["neck.44"])
except KeyError as e:
    print("typo →", e)

# %% [markdown]
# ### Adapter and normalised MSE
#
# The student's map has $C_s$ channels, the teacher's $C_t$. A **1×1 conv adapter** maps one to the
# other (trained with the student, thrown away afterwards), and a resize matches the spatial size
# when it differs (same grid convention as notebook 03's `resize_heatmaps`).
#
# Then the scale: feature maps of different layers and networks differ by orders of magnitude, so a
# plain MSE needs a new weight β for every layer choice. We **standardise each teacher channel**
# over the batch (zero mean, unit variance over $N, H, W$) and let the adapter match that:
#
# $$\mathcal{L}_{\mathrm{feat}} = \frac{1}{N C_t H W}\sum \Big(A(F^{\mathrm{s}}) - \frac{F^{\mathrm{t}} - \mu_c}{\sigma_c}\Big)^2$$
#
# At initialisation this is ≈ 1 for any layer pair (a standardised target has unit variance), and
# multiplying the teacher's features by any constant changes nothing. By hand vs the library:

# %%
from posekd_lib.distill import FeatureAdapter, feature_kd_loss

adapter = FeatureAdapter(s_feat.shape[1], t_feat.shape[1])
mu = t_feat.mean(dim=(0, 2, 3), keepdim=True)
sd = t_feat.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
t_std = (t_feat - mu) / (sd + 1e-5)
proj = adapter.proj(s_feat)
if proj.shape[-2:] != t_feat.shape[-2:]:
    proj = adapter(s_feat, t_feat)
feat_inline = F.mse_loss(proj, t_std)
torch.testing.assert_close(feat_inline, feature_kd_loss(s_feat, t_feat, adapter))
torch.testing.assert_close(feature_kd_loss(s_feat, 1000 * t_feat, adapter), feat_inline, rtol=1e-4, atol=0)  # scale-free
# (equal up to the 1e-5 that keeps the division safe)
print(f"feature loss at initialisation: {feat_inline.item():.3f} (≈ 1, whatever the layers)")

# %% [markdown]
# `FeatureKD` puts it together as a `loss_fn` for `fit`: hooks on both nets, one adapter per pair
# (built here, so they exist before the optimizer, which must include them — `train_student` does
# that), the teacher run on the same augmented batch, and
#
# $$\mathcal{L} = (1-\alpha)\,\mathrm{MSE}_w(S, T^{\mathrm{gt}}) + \alpha\,\mathrm{MSE}(S, T^{\mathrm{t}}) + \beta\,\mathcal{L}_{\mathrm{feat}}$$
#
# — the feature term on top of notebook 03's FPD loss (`alpha_logits`). Check one step of it against
# the pieces:

# %%
from posekd_lib.distill import FeatureKD, fpd_loss

settings = {k: v for k, v in KD_SETTINGS["feature"].items() if k != "method"}
kd = FeatureKD(teacher, student, PAIRS, input_size=BUDGET.input_size, **settings)
s_out = student(batch["image"])
parts = kd(s_out, batch)
with torch.no_grad():
    t_hm = teacher(batch["image"])
s_f, t_f = kd.features()
expected = (fpd_loss(s_out, t_hm, batch["target"], batch["target_weight"], settings["alpha_logits"])
            + settings["beta"] * feature_kd_loss(s_f, t_f, list(kd.adapters.values())))
torch.testing.assert_close(parts["loss"], expected)
kd.remove()
print({k: round(float(v), 5) for k, v in parts.items()})
print(f"adapter parameters trained with the student: {sum(p.numel() for p in kd.parameters())}")

# %% [markdown]
# **Choosing β.** As with the KL in notebook 03, compare gradients: the feature term should move the
# student's features about as much as the heatmap terms do, not overwhelm them. The gradient each
# term sends into the student's parameters, on this batch:

# %%
def param_grad_norm(loss) -> float:
    grads = torch.autograd.grad(loss, [p for p in student.parameters()], retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))


kd = FeatureKD(teacher, student, PAIRS, input_size=BUDGET.input_size, **settings)
parts = kd(student(batch["image"]), batch)
kd.remove()
g_task = param_grad_norm((1 - settings["alpha_logits"]) * parts["gt"] + settings["alpha_logits"] * parts["kd"])
g_feat = param_grad_norm(settings["beta"] * parts["feat"])
print(f"|grad| from the heatmap terms {g_task:.2e}, from β·feature term {g_feat:.2e} (β = {settings['beta']})")

# %% [markdown]
# ## 2. Training with hints
#
# Same budget as the baseline and the logits runs of notebook 03; only the loss changes.

# %%
from posekd_lib.experiments import evaluate_teacher, kd_recipe, train_student

runs = {"baseline": train_student(STUDENT, mode=MODE, seed=0, tag="baseline")}
for tag in ("fpd", "kl", "feature"):
    runs[tag] = train_student(STUDENT, mode=MODE, seed=0, tag=tag, kd=kd_recipe(tag, teacher, STUDENT, MODE))
teacher_run = evaluate_teacher(MODE)
assert all(not m._forward_hooks for m in runs["feature"].model.modules())  # FeatureKD removed its hooks
h = runs["feature"].history
fig, ax = plt.subplots(figsize=(7, 3.3))
for part in ("gt", "kd", "feat"):
    if part in h.losses:
        ax.plot(h.step, h.losses[part], label=part)
ax.set(xlabel="step", yscale="log", title="feature KD: loss components")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 3. Every model so far, side by side
#
# One table from the results CSV every notebook writes to (`PATHS.results_csv`): the teacher, both
# baselines, and the distilled SqueezeNets. AP and its parts, PCK, size, compute and training time.

# %%
from posekd_lib.evaluation import ResultsTable

table = ResultsTable(PATHS.results_csv).df()
cols = ["model", "setting", "AP", "AP50", "AP75", "AR", "PCK@0.2", "params", "MACs", "train_time_s", "steps"]
keep = table.setting.isin(["teacher", "baseline", "fpd", "kl", "feature"])
comparison = table[keep][cols].reset_index(drop=True)
comparison.round(3)

# %%
t_ap, b_ap = teacher_run.metrics["AP"], runs["baseline"].metrics["AP"]
print(f"teacher AP {t_ap:.3f}, {STUDENT} baseline AP {b_ap:.3f}")
for tag in ("fpd", "kl", "feature"):
    ap = runs[tag].metrics["AP"]
    closed = (ap - b_ap) / (t_ap - b_ap) if t_ap > b_ap else float("nan")
    print(f"  {tag:8s} AP {ap:.3f} ({ap - b_ap:+.3f}): {100 * closed:5.0f} % of the teacher-baseline gap")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
labels = ["teacher", *runs]
metrics = [teacher_run.metrics, *(r.metrics for r in runs.values())]
xx = np.arange(len(labels))
for j, key in enumerate(("AP", "AP50", "AP75")):
    axes[0].bar(xx + (j - 1) * 0.27, [m[key] for m in metrics], 0.27, label=key)
axes[0].set_xticks(xx, labels)
axes[0].set(title=f"{STUDENT} students vs the teacher (one seed)")
axes[0].legend()
for m, lab in zip(metrics, labels):
    axes[1].scatter(m["AP"], m["PCK@0.2"], s=40)
    axes[1].annotate(lab, (m["AP"], m["PCK@0.2"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
axes[1].set(xlabel="AP", ylabel="PCK@0.2", title="strict (AP) vs coarse (PCK) accuracy")
fig.tight_layout()

# %% [markdown]
# One seed can mislead: `benchmarks/bench_kd.py` trains every setting with two seeds and reports
# the mean and spread; the README's results table comes from it.

# %% [markdown]
# ## 4. Where did KD fix the baseline — and where not?
#
# Every model's predictions go into the FiftyOne validation dataset as a field (`<field>_oks` per
# image: mean OKS over its people). Two views answer the question: images where the best distilled
# student beats the baseline by a wide margin, and images where it is *worse*.

# %%
from posekd_lib.inspect_fo import a_beats_b, add_predictions, launch_app, mode_dataset

ds = mode_dataset(splits.val, MODE)   # notebook 01's validation dataset (built here if missing)
fields = {"teacher": teacher_run.results, **{f"{tag}_{STUDENT}": r.results for tag, r in runs.items()}}
for field, results in fields.items():
    add_predictions(ds, results, field, splits.val.ann_file)
best = max(("fpd", "kl", "feature"), key=lambda t: runs[t].metrics["AP"])
best_field, base_field = f"{best}_{STUDENT}", f"baseline_{STUDENT}"
fixed = a_beats_b(ds, best_field, base_field, margin=0.1)
broken = a_beats_b(ds, base_field, best_field, margin=0.1)
print(f"best distilled setting: {best}")
print(f"{len(fixed)} images where {best} beats the baseline by > 0.1 mean OKS, {len(broken)} where it is worse")
for name, field in (("teacher", "teacher"), ("baseline", base_field), (best, best_field)):
    oks_values = [v for v in ds.values(f"{field}_oks") if v is not None]
    print(f"  mean image OKS, {name:9s}: {np.mean(oks_values):.3f}")

# %% [markdown]
# Fixed and broken cases side by side (ground truth, teacher, baseline, best distilled student):

# %%
from posekd_lib.data import read_rgb
from posekd_lib.plotting import compare_models

val_ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, BUDGET.input_size, BUDGET.heatmap_size,
                        BUDGET.sigma)
images = {img["id"]: img for img in val_ds.coco["images"]}
kpts = {name: np.asarray([r["keypoints"] for r in res]).reshape(len(res), -1, 3)
        for name, res in (("teacher", teacher_run.results), ("baseline", runs["baseline"].results),
                          (best, runs[best].results))}
for title, view in (("KD fixed", fixed), ("KD broke", broken)):
    if not len(view):
        print(f"{title}: no image in this view")
        continue
    coco_id = view.first()["coco_id"]
    persons = [j for j, s in enumerate(val_ds.samples) if s["image_id"] == coco_id]
    j = max(persons, key=lambda j: val_ds.samples[j]["area"])
    rgb = read_rgb(Path(splits.val.img_dir) / images[coco_id]["file_name"])
    fig = compare_models(rgb, {n: p[j] for n, p in kpts.items()}, gt=val_ds.samples[j]["joints"], score_thr=0.1)
    fig.suptitle(f"{title}: image {coco_id}", y=1.02)

# %% [markdown]
# Browse both views in the App when you run the notebook yourself (skipped in headless and CI
# runs): put the `baseline_…` and the distilled field side by side.

# %%
session = launch_app(fixed if len(fixed) else ds)

# %% [markdown]
# ## 5. Exercises
#
# Solutions: `notebooks/solutions/04_feature_kd_solutions.py`.
#
# 1. **Hints alone.** Train feature KD without the logits term (`kd_recipe("feature", teacher,
#    STUDENT, MODE, alpha_logits=0.0)`, new tag). How much of the gain is the hint's?
# 2. **Another layer.** Pair the student's `backbone.12` (stride 16) with the teacher's `stage3`
#    (its high-resolution branch is used; the adapter resizes). Better or worse than the stride-4
#    pair — and why?
# 3. **Unnormalised MSE.** Use `normalize="none"` with the same β: print the feature loss at
#    initialisation and explain what happens to training.
# 4. **β sweep.** β = 10× and 0.1× the recipe's value. Watch the `gt` curve: when does the hint
#    start to compete with the task?
# 5. **Views.** In FiftyOne, filter the `fixed` view to images with occluded joints
#    (`occluded_persons`): does KD help most where joints are hidden?
