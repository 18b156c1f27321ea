# %% [markdown]
# # 06 · Export: from a QAT model to what the MAX78000 synthesizer needs — and an int8 ONNX for STM32
#
# **What you will learn**
# 1. Batch-norm fusion: why the chip has no BatchNorm and how it is folded into the conv (by hand).
# 2. The lean checkpoint and the quantizer: our own implementation of ai8x-synthesis' `quantize.py`
#    formulas, checked by hand on one layer.
# 3. The network YAML the synthesizer reads, generated from the model (processors, memory offsets,
#    pooling, the wide last layer, the CHW input).
# 4. A sample input and the integer output the chip must produce for it; running `ai8xize.py` when
#    you have ai8x-synthesis, and its memory and latency report.
# 5. The other MCU path: ONNX export with onnxruntime parity, and static int8 (QDQ) quantization with
#    calibration data for STM32Cube.AI — scored with COCOeval like every model before.
#
# **Prerequisites:** notebook 05 (its QAT student is cached; it is trained here if missing).
# **Time:** quick ≈ 1 min · workshop ≈ 3 min on a 2-core laptop (+ the synthesizer, if present).

# %% [markdown]
# ## 0. Setup

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
sys.path.insert(0, str(next(p for p in (HERE, *HERE.parents) if (p / "posekd_lib").is_dir())))  # the repo

import copy

import numpy as np
import torch

from posekd_lib import ai8x, export, max78000
from posekd_lib import ai8x_models as am
from posekd_lib.config import notebook_setup
from posekd_lib.data import TopDownDataset, dataset_splits
from posekd_lib.experiments import budget, train_ai8x

MODE, PATHS = notebook_setup()
BUDGET = budget(MODE)
EXPORT_DIR = PATHS.root / "export"
EXPORT_DIR.mkdir(parents=True, exist_ok=True)
print(f"export folder: {EXPORT_DIR}")

run = train_ai8x("tiny", mode=MODE, seed=0, kd="fpd", progress=False)   # notebook 05's student (cached)
qat_model = run.model.eval()
shape = am.input_shape(am.AI8X_STUDENT_INPUT)
print(f"QAT student {run.name}: float AP {run.metrics['float']['AP']:.3f}, int8 AP {run.metrics['int8']['AP']:.3f}")

# %% [markdown]
# ## 1. Batch-norm fusion
#
# In eval mode a BatchNorm is an affine map per channel, $y = \gamma (x - \mu)/\sqrt{\sigma^2 +
# \epsilon} + \beta$, so it can be folded into the conv before it: with $k = \gamma /
# \sqrt{\sigma^2+\epsilon}$, $w' = k\,w$ and $b' = k\,(b - \mu) + \beta$. ai8x layers apply the BN
# as `bn(x) / 4` (the chip's fixed ×¼ scale for BN'd layers), so the library folds $\gamma/4$ and
# $\beta/4$. By hand on the float student's first layer, against `ai8x.fuse_bn_layers`:

# %%
float_model = copy.deepcopy(run.float_model).eval()
layer = float_model.enc1
bn, w0, b0 = layer.bn, layer.op.weight.detach().clone(), layer.op.bias.detach().clone()
k = 0.25 * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
w_inline = w0 * k[:, None, None, None]
b_inline = (b0 - bn.running_mean) * k + 0.25 * bn.bias.detach()
x = am.to_ai8x_range(torch.randn(2, 3, 128, 96))
with torch.no_grad():
    before = float_model(x)
    ai8x.fuse_bn_layers(float_model)
    after = float_model(x)
torch.testing.assert_close(float_model.enc1.op.weight, w_inline)
torch.testing.assert_close(float_model.enc1.op.bias, b_inline)
torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
print(f"BN folded into {sum(1 for _, m in ai8x.ai8x_layers(float_model) if m.op is not None)} layers; "
      f"max output change {(after - before).abs().max():.2e}")

# %% [markdown]
# (For a transposed conv the output channels are dim 1 of the weight, not dim 0 — a classic bug;
# `fuse_bn_layers` handles both, and the QAT model already went through it in `initiate_qat`.)
#
# ## 2. Lean checkpoint and quantization
#
# The synthesizer reads a checkpoint with `epoch`, `state_dict`, `arch` and `extras`. Ours holds only
# tensors and plain values, so it opens with `torch.load(weights_only=True)` — no pickled code:

# %%
ckpt = export.lean_checkpoint(qat_model, epoch=1, arch="ai85posenet", extras={"variant": "tiny", "mode": MODE})
qat_file = export.save_checkpoint(ckpt, EXPORT_DIR / "ai85posenet_tiny_qat.pth.tar")
reloaded = torch.load(qat_file, map_location="cpu", weights_only=True)
print(sorted(reloaded), f"{len(reloaded['state_dict'])} tensors,", qat_file.stat().st_size, "bytes")

# %% [markdown]
# `quantize_checkpoint` implements ai8x-synthesis' `quantize.py` (the `MAX_BIT_SHIFT` method used
# after QAT): per layer with $b$ weight bits and $s = \lfloor\log_2(1/\max|[w; \text{bias}]|)\rfloor$
# (clamped), the integer weights are $\mathrm{clamp}(\lfloor w\cdot 2^{s}\cdot 2^{b-1} + \tfrac12
# \rfloor, -2^{b-1}, 2^{b-1}-1)$ and the stored output shift is $-s$. By hand on the head:

# %%
q = export.quantize_checkpoint(ckpt)
export.save_checkpoint(q, EXPORT_DIR / "ai85posenet_tiny_q8.pth.tar")
sd = ckpt["state_dict"]
w, bias = sd["head.op.weight"], sd["head.op.bias"]
bits = int(sd["head.weight_bits"].item())
s = torch.floor(torch.log2(1 / torch.cat([w.flatten(), bias.flatten()]).abs().max())).clamp(-7 - bits, 23 - bits)
w_q = torch.clamp(torch.floor(w * 2**s * 2 ** (bits - 1) + 0.5), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
torch.testing.assert_close(q["state_dict"]["head.op.weight"], w_q)
print(f"head: {bits}-bit weights in [{int(w_q.min())}, {int(w_q.max())}], output_shift "
      f"{float(q['state_dict']['head.output_shift']):.0f}")

# %% [markdown]
# ## 3. The network YAML
#
# The synthesizer also needs a description of how each layer runs on the chip: which processors
# hold its input channels, where in data memory its input and output live (ping-pong between two
# halves), the pooling (with an explicit `pool_stride`), the activation, `output_width: 32` for the
# wide head, and the input format. `network_yaml` generates it from the model, so it cannot disagree
# with the weights:

# %%
yaml_text = export.network_yaml(qat_model, shape, arch="ai85posenet", dataset="posekd_embedded",
                                data_format=am.AI8X_DATA_FORMAT)
yaml_file = EXPORT_DIR / "ai85posenet_tiny.yaml"
yaml_file.write_text(yaml_text)
print(yaml_text)

# %% [markdown]
# ## 4. Sample input, expected output, synthesis
#
# The synthesizer embeds a sample input in the generated C code and checks the chip's output against
# its own computation. We give it one validation crop (integers −128…127, CHW) and compute what the
# integer model outputs for it — the number the board must reproduce bit for bit:

# %%
splits = dataset_splits(MODE)
val_ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP,
                        BUDGET.sigma)
crop = val_ds[0]["image"][None]
sample = export.sample_input(am.to_ai8x_range(crop))
sample_file = EXPORT_DIR / "sample_posekd_embedded.npy"
np.save(sample_file, sample)
sim = am.simulate_copy(qat_model)
expected = export.expected_output(sim, sample)
print(f"sample {sample.shape} {sample.dtype} in [{sample.min()}, {sample.max()}] → expected output "
      f"{expected.shape} {expected.dtype} (32-bit wide head)")
hm = ai8x.wide_output_to_float(torch.from_numpy(expected).float()[None], am.head_layer(sim))
torch.testing.assert_close(hm, am.HeatmapView(sim)(crop))            # the same heatmaps the evaluation saw
print("peak cells per joint (y, x):", [divmod(int(i), hm.shape[-1]) for i in hm[0].flatten(1).argmax(1)[:5]], "…")

# %% [markdown]
# With an ai8x-synthesis checkout, point `AI8X_SYNTHESIS_DIR` at it (and `AI8X_SYNTHESIS_PYTHON` at
# its interpreter if it has its own) and `run_izer` runs `ai8xize.py` on these three files;
# otherwise it prints the exact command.

# %%
izer = export.run_izer(EXPORT_DIR / "ai85posenet_tiny_q8.pth.tar", yaml_file, sample_file,
                       EXPORT_DIR / "synthed", prefix="ai85posenet_tiny")
if izer is not None:
    print("izer exit code", izer["returncode"], "→", izer["out_dir"])
    print(sorted(p.name for p in izer["out_dir"].iterdir()))
    print({k: izer.get(k) for k in ("weight_bytes", "bias_bytes", "cycles", "latency_ms")})
    if izer["output"] is not None:
        print("izer's own output equals ours:", np.array_equal(izer["output"].reshape(expected.shape), expected))

# %% [markdown]
# Our own estimate, computed with the synthesizer's rules (the same numbers its report prints; the
# tests check them against the golden network's report):

# %%
report = max78000.resource_report(qat_model, shape, data_format=am.AI8X_DATA_FORMAT)
print(report)

# %% [markdown]
# ## 5. The STM32 path: ONNX and int8 with onnxruntime
#
# Boards without a CNN accelerator (e.g. STM32 with STM32Cube.AI / X-CUBE-AI) take a standard ONNX
# model, ideally already quantized to int8 in the QDQ format. We export the best distilled SqueezeNet
# of notebooks 03–04 (standard layers are fine here), check onnxruntime against torch, quantize with
# 64 calibration crops and score both files with COCOeval:

# %%
from posekd_lib import onnx_export as ox
from posekd_lib.experiments import kd_recipe, train_student
from posekd_lib.teachers import load_teacher

teacher, _ = load_teacher(mode=MODE)
student = train_student("squeezenet", mode=MODE, seed=0, tag="fpd", progress=False,
                        kd=kd_recipe("fpd", teacher, "squeezenet", MODE)).model.eval()
onnx_file = ox.export_onnx(student, EXPORT_DIR / "squeezenet_fpd.onnx", input_size=BUDGET.input_size, dynamo=False)
val_crops = TopDownDataset(splits.val.ann_file, splits.val.img_dir, BUDGET.input_size, BUDGET.heatmap_size,
                           BUDGET.sigma)
x = torch.stack([val_crops[i]["image"] for i in range(4)])
print(f"ONNX vs torch, max |difference| on 4 crops: {ox.onnx_parity(student, onnx_file, x):.2e}")

calib = ox.calibration_reader(splits.train, BUDGET.input_size, BUDGET.heatmap_size, BUDGET.sigma, num_samples=64)
int8_file = ox.quantize_int8(onnx_file, EXPORT_DIR / "squeezenet_fpd_int8.onnx", calib)
rep = ox.int8_report(onnx_file, int8_file)
print({k: rep[k] for k in ("float_bytes", "int8_bytes", "size_ratio", "quantize_nodes", "dequantize_nodes")})
print(ox.heatmap_agreement(onnx_file, int8_file, calib))

# %%
onnx_metrics = {}
for name, path in (("float ONNX", onnx_file), ("int8 ONNX", int8_file)):
    onnx_metrics[name] = ox.evaluate_onnx(path, splits.val, BUDGET.input_size, BUDGET.heatmap_size, BUDGET.sigma,
                                          batch_size=BUDGET.eval_batch_size, progress=False)
for name, m in onnx_metrics.items():
    print(f"{name:10s} AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}")

# %% [markdown]
# ## 6. Exercises
#
# Solutions: `notebooks/solutions/06_export_solutions.py`.
#
# 1. **The small variant.** Export `train_ai8x("small")` the same way. Compare weight bytes and
#    latency in the resource report with the tiny one.
# 2. **Calibration.** Quantize the ONNX model with `method="Percentile"` and `"Entropy"`, and with
#    8 instead of 64 calibration crops. Which matters more for AP?
# 3. **A broken YAML.** Build an `ai85posenet` whose modules are registered in a different order
#    than the forward uses them (e.g. a custom `spec` with the same layers reordered in `__init__`)
#    and call `network_yaml`: read the error.
