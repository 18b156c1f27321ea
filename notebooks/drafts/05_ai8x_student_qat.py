# %% [markdown]
# # 05 · A pose student for the MAX78000: legal layers, KD, quantization-aware training, pruning
#
# **What you will learn**
# 1. Why a microcontroller's CNN accelerator accepts only some layers, and how the library checks
#    every rule when a layer is built.
# 2. A top-down pose student made only of legal ai8x layers, and how to read its resource report
#    (weight memory, data memory, latency) before training anything.
# 3. Fake quantization, derived by hand: rounding weights and activations to 8 bits during training
#    with a straight-through gradient, and the per-layer output shift.
# 4. Distilling the demo teacher into this student (notebook 03's FPD loss), then QAT, and what
#    8-bit integer inference costs in AP (simulate mode: the chip's integer arithmetic).
# 5. Pruning for the MAX78000: why zeroed weights free no memory on the chip and removed channels do.
#
# **Prerequisites:** notebook 03 (logits KD). **Time:** quick ≈ 1 min · workshop ≈ 10 min on a
# 2-core laptop · full: on a GPU.

# %% [markdown]
# ## 0. Setup

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
sys.path.insert(0, str(next(p for p in (HERE, *HERE.parents) if (p / "posekd_lib").is_dir())))  # the repo

import copy
import matplotlib.pyplot as plt
import numpy as np
import torch

from posekd_lib import ai8x
from posekd_lib import ai8x_models as am
from posekd_lib import max78000
from posekd_lib.config import notebook_setup
from posekd_lib.experiments import AI8X_STEPS, budget

MODE, PATHS = notebook_setup()
BUDGET = budget(MODE)
print(f"MAX78000 student: float steps, QAT steps = {AI8X_STEPS[MODE]}, batch {BUDGET.batch_size}")

# %% [markdown]
# ## 1. Why the accelerator is picky
#
# The MAX78000's CNN accelerator is not a small GPU. It is 64 processors, each with its own slice
# of weight memory and of data memory, wired for one kind of work: a 3×3 or 1×1 convolution at
# stride 1 (optionally after a 2×2/… max or average pool), with the bias, a fixed-point rescale (the
# *output shift*) and ReLU/Abs fused in, on 8-bit data. Everything else — strided convs, 5×5
# kernels, dilation, GELU, upsampling layers — either does not exist or must be re-expressed with
# these pieces (stride 2 = pool + conv; upsampling = a stride-2 *transposed* conv). The budgets:

# %%
lim = max78000.limits(85)
print(f"{lim.name}: weight memory {lim.weight_memory_bytes:,} B, bias memory {lim.bias_memory_bytes:,} B, "
      f"{lim.processors} processors, {lim.data_memory_instances} data-memory instances of "
      f"{lim.data_memory_per_instance:,} B, "
      f"at most {lim.max_layers} layers, CNN clock {lim.cnn_clock_hz / 1e6:.0f} MHz")

# %% [markdown]
# The library's ai8x layers check each rule when they are built, and the error names the layer and
# the rule:

# %%
for what, build in (("stride 2", lambda: ai8x.FusedConv2dBNReLU(16, 32, 3, stride=2, padding=1, name="enc1")),
                    ("5x5 kernel", lambda: ai8x.FusedConv2dReLU(16, 32, 5, padding=2, name="enc2")),
                    ("dilation", lambda: ai8x.Conv2d(16, 32, 3, dilation=2, padding=2, name="enc3"))):
    try:
        build()
    except ai8x.Ai8xRuleError as e:
        print(f"{what:10s} → {e}")

# %% [markdown]
# The students of notebooks 02–04 are out of the question: plain `Conv2d` with stride 2, depthwise
# convs, bilinear upsampling. `check_model` says so for the SqueezeNet:

# %%
from posekd_lib.experiments import build_student_model

try:
    ai8x.check_model(build_student_model("squeezenet"))
except ai8x.Ai8xRuleError as e:
    print(e)

# %% [markdown]
# ## 2. A pose student made of legal layers
#
# `ai85posenet` is a plain encoder–decoder: four 2×2 max pools, each fused into the 3×3 conv that
# follows, take the 128×96 crop down to 8×6; two 3×3 stride-2 transposed convs bring it back to
# 32×24 (¼ of the input, the teacher's heatmap size, so KD compares maps cell by cell); a *wide*
# 1×1 conv (32-bit outputs, no activation) gives the 17 heatmaps. The input is stored channel by
# channel (CHW) so one 128×96 channel fits one 32 KiB data-memory instance. Before training
# anything, the resource report says whether it fits:

# %%
shape = am.input_shape(am.AI8X_STUDENT_INPUT)
for variant in am.VARIANTS:
    net = am.ai85posenet(variant)
    r = max78000.resource_report(net, shape, data_format=am.AI8X_DATA_FORMAT)
    t = r.totals
    print(f"{variant:5s}: {sum(p.numel() for p in net.parameters() if p.requires_grad):,} params, "
          f"weights {t['weight_bytes']:,} B ({100 * t['weight_bytes'] / lim.weight_memory_bytes:.0f} %), "
          f"latency {t['cycles'] / lim.cnn_clock_hz * 1e3:.2f} ms, fits: {r.fits}")
print()
print(max78000.resource_report(am.ai85posenet("tiny"), shape, data_format=am.AI8X_DATA_FORMAT))

# %% [markdown]
# ## 3. Fake quantization, by hand
#
# On the chip, weights are 8-bit integers and every layer's output is rescaled by a power of two
# and clamped to 8 bits. QAT trains with these effects in the forward pass:
#
# * **weights** in $[-1, 1)$ are rounded to $b$ bits: $q(w) = \lfloor w\cdot 2^{b-1} + \tfrac12
#   \rfloor / 2^{b-1}$, clamped to $[-1, 1 - 2^{1-b}]$;
# * the **output shift** $s = -\lfloor \log_2(1/\max|w|) \rfloor$ scales small weights up to use the
#   8-bit range, and the output is multiplied by $2^{s}$ again;
# * **activations** are rounded to multiples of $1/128$ and clamped to $[-1, 127/128]$.
#
# Rounding has zero gradient almost everywhere, so the backward pass pretends it was the identity:
# the **straight-through estimator**. By hand vs the library's `ai8x.quantize`:

# %%
w = torch.randn(1000) * 0.3
b = 8
q_inline = torch.floor(w * 2 ** (b - 1) + 0.5) / 2 ** (b - 1)
torch.testing.assert_close(ai8x.quantize(w, b, simulate=False), q_inline)
x = w.clone().requires_grad_(True)
ai8x.quantize(x, b, simulate=False).sum().backward()
torch.testing.assert_close(x.grad, torch.ones_like(x))          # straight through
print(f"max rounding error {(q_inline - w).abs().max():.5f} (half a step: {0.5 / 2 ** (b - 1):.5f}); "
      f"gradient of the rounding = 1 everywhere")

small = torch.randn(64) * 0.05
shift_inline = -torch.floor(torch.log2(1 / small.abs().max()))
torch.testing.assert_close(ai8x.output_shift_of(small), shift_inline.clamp(-15, 15))
print(f"weights up to {small.abs().max():.3f}: output shift {int(shift_inline)} → stored as w·2^{-int(shift_inline)}, "
      f"max {small.abs().max() * 2 ** -shift_inline:.3f}")

# %% [markdown]
# ## 4. Distil the teacher into the MAX78000 student, then QAT
#
# `train_ai8x` (in `posekd_lib.experiments`) trains the tiny student in two phases with notebook 03's
# FPD loss (the frozen teacher runs on the same augmented batch): first in float, then
# `ai8x.initiate_qat` folds the BatchNorms into the convs and turns quantization on (policy
# `DEFAULT_QAT_POLICY`: 8-bit weights everywhere) and training continues at a tenth of the learning
# rate. Two details matter:
#
# * the input goes through `to_ai8x_range`: the chip sees pixels as integers −128…127, the model
#   as multiples of 1/128;
# * the **wide head's output is scaled by $2^{-s}$** during QAT (and by $2^{14}$ in integer
#   mode), and $s$ changes while the weights change; `HeatmapView` divides it out, so the loss and
#   the decoder always see heatmaps at their true scale.

# %%
from posekd_lib.experiments import train_ai8x

print(am.DEFAULT_QAT_POLICY)
run = train_ai8x("tiny", mode=MODE, seed=0, kd="fpd")
fig, ax = plt.subplots(figsize=(7, 3.3))
h_f, h_q = run.histories["float"], run.histories["qat"]
ax.plot(h_f.step, h_f.losses["gt"], label="float: GT term")
offset = h_f.step[-1] if h_f.step else 0
ax.plot([s + offset for s in h_q.step], h_q.losses["gt"], label="QAT: GT term")
ax.axvline(offset, color="k", ls=":", lw=1)
ax.set(xlabel="step", ylabel="joints MSE", yscale="log", title="MAX78000 student: float, then QAT")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 5. What does 8-bit cost?
#
# Three evaluations of the same student: float (before QAT), QAT (fake-quantized, float arithmetic)
# and **int8 simulate** — the quantized checkpoint run with the chip's integer arithmetic (the same
# numbers the synthesizer's generated C code checks against; notebook 06).

# %%
cols = ["AP", "AP50", "AP75", "AR", "PCK@0.2"]
print(f"{'':8s}" + "".join(f"{c:>9s}" for c in cols))
for key, m in run.metrics.items():
    print(f"{key:8s}" + "".join(f"{m[c]:9.3f}" for c in cols))
drop = run.metrics["float"]["AP"] - run.metrics["int8"]["AP"]
print(f"\nint8 vs float: {drop:+.4f} AP ({100 * drop:+.2f} AP points; goal: within 1.0 point)")

# %% [markdown]
# **Mixed precision.** Weight memory, not compute, is the MAX78000's tightest budget. A QAT policy
# can give some layers 4-bit weights (half the bytes). The library's example puts the two widest
# encoder layers at 4 bits; here is what it saves, and what it costs *without* retraining (QAT with
# that policy would recover part of it — an exercise):

# %%
policy4 = am.QAT_POLICY_4BIT_EXAMPLE
print(policy4)
m4 = ai8x.initiate_qat(copy.deepcopy(run.float_model), policy4).eval()
for name, net in (("8-bit", run.model), ("4-bit example", m4)):
    t = max78000.resource_report(net, shape, data_format=am.AI8X_DATA_FORMAT).totals
    print(f"{name:14s} weights {t['weight_bytes']:,} B")

from posekd_lib.data import dataset_splits  # noqa: E402

splits = dataset_splits(MODE)
ap4 = am.evaluate_ai8x(m4, splits.val, simulate=False, batch_size=BUDGET.eval_batch_size, progress=False)["AP"]
print(f"AP with the 4-bit example policy, no retraining: {ap4:.3f} (8-bit QAT: {run.metrics['qat']['AP']:.3f})")

# %% [markdown]
# ## 6. The int8 model in FiftyOne
#
# The integer model's predictions go in as one more field next to the float student's, so you can
# find the images where quantization moved a joint.

# %%
from posekd_lib.inspect_fo import a_beats_b, add_predictions, mode_dataset

ds = mode_dataset(splits.val, MODE)   # notebook 01's validation dataset (built here if missing)
for key in ("float", "int8"):
    print(key, add_predictions(ds, run.results[key], f"ai8x_tiny_{key}", splits.val.ann_file))
worse = a_beats_b(ds, "ai8x_tiny_float", "ai8x_tiny_int8", margin=0.05)
print(f"{len(worse)} images where int8 is > 0.05 mean OKS worse than float")

# %% [markdown]
# ## 7. Pruning for the MAX78000
#
# Two ways to make a network "smaller":
#
# * **Gradual magnitude pruning** (Zhu & Gupta): zero the smallest weights, more and more during
#   fine-tuning, to 30–50 % sparsity. On a GPU or with sparse kernels this can save compute; on the
#   MAX78000 every kernel occupies its processor's weight slots whether or not it is zero, so it saves
#   **nothing**.
# * **Channel pruning**: remove whole output channels (and the matching inputs of the next layer).
#   The layer really gets narrower: fewer kernels, fewer bytes, fewer cycles.
#
# Both applied to the float student, each fine-tuned for the same number of steps:

# %%
from posekd_lib import pruning
from posekd_lib.ai8x_models import HeatmapView
from posekd_lib.data import TopDownDataset
from posekd_lib.train import fit

ft_steps = max(2, AI8X_STEPS[MODE][1])
train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP,
                          BUDGET.sigma, train=True)
loader = torch.utils.data.DataLoader(train_ds, batch_size=BUDGET.batch_size, shuffle=True, drop_last=True)

channel_pruned = pruning.prune_channels(run.float_model, shape, ratio=0.5)
fit(HeatmapView(channel_pruned), loader, max_steps=ft_steps, lr=BUDGET.lr / 4, out_dir=PATHS.checkpoints,
    run_name="ai8x_tiny_channel50_ft", progress=False)

gmp = copy.deepcopy(run.float_model)
opt = torch.optim.Adam(gmp.parameters(), lr=BUDGET.lr / 4)
pruner = pruning.GradualMagnitudePruner(gmp, total_steps=ft_steps, final_sparsity=0.5, every=max(1, ft_steps // 10))
handle = pruning.masked_optimizer_step(opt, pruner)
fit(HeatmapView(gmp), loader, max_steps=ft_steps, optimizer=opt, out_dir=PATHS.checkpoints,
    run_name="ai8x_tiny_gmp50_ft", progress=False, resume=False)
handle.remove()
pruning.apply_masks(gmp, pruning.magnitude_masks(gmp, 0.5))   # exact final sparsity

rows = []
for name, net in (("float student", run.float_model), ("GMP 50 %", gmp), ("channels −50 %", channel_pruned)):
    net.eval()
    ap_ = am.evaluate_ai8x(net, splits.val, simulate=False, batch_size=BUDGET.eval_batch_size, progress=False)["AP"]
    rep = max78000.resource_report(net, shape, data_format=am.AI8X_DATA_FORMAT)
    rows.append((name, pruning.sparsity_of(net), rep.totals["weight_bytes"],
                 rep.totals["cycles"] / lim.cnn_clock_hz * 1e3, ap_))
print(f"{'':16s}{'zeros':>8s}{'weight bytes':>14s}{'latency ms':>12s}{'AP':>8s}")
for name, sp, wb, ms, ap_ in rows:
    print(f"{name:16s}{100 * sp:7.0f}%{wb:14,}{ms:12.2f}{ap_:8.3f}")

# %% [markdown]
# Half the weights of the GMP model are zero, yet its weight memory and latency are the float
# student's to the byte: the synthesizer stores and runs every kernel. The channel-pruned model
# needs far fewer bytes and cycles. (Its AP after a short fine-tune is lower; with the same budget
# as the original training, or pruned *before* distillation, it recovers more — exercise 3.)

# %% [markdown]
# ## 8. Exercises
#
# Solutions: `notebooks/solutions/05_ai8x_student_qat_solutions.py`.
#
# 1. **Ground truth only.** Train the tiny student without KD (`train_ai8x("tiny", kd=None)`) and
#    compare its float and int8 AP with the distilled one.
# 2. **4-bit QAT.** Train with `qat_policy=am.QAT_POLICY_4BIT_EXAMPLE` (and a new `tag`). How much of
#    the no-retraining loss of section 5 does QAT recover?
# 3. **Prune, then distil.** Channel-prune the untrained tiny student by 50 % (`pruning.prune_channels`)
#    and check with the resource report that it fits with room to spare; what would you spend the
#    freed memory on?
# 4. **Depthwise.** Build a depthwise `ai8x.FusedConv2dBNReLU(16, 16, 3, padding=1, groups=16)` for
#    the MAX78000 and for the MAX78002 (`device=ai8x.Device(87)`). Which one accepts it? And
#    `groups=4`?
