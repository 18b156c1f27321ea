"""What one training step costs, plain and distilled: seconds per step of each KD setting.

    python benchmarks/bench_kd_step.py                                   # workshop, SqueezeNet, 1 thread
    python benchmarks/bench_kd_step.py --settings baseline feature feature-cached --steps 100 --threads 2
    python benchmarks/bench_kd_step.py --mode quick --steps 4 --warmup 2  # seconds: checks that it runs
    python benchmarks/bench_kd_step.py --settings baseline --amp bf16 float32   # bf16 against float32

Each setting trains the student exactly as ``experiments.train_student`` does (the mode's budget:
batch, augmentation, AMP, threads; the distiller of ``recipes.kd_recipe``) for ``--warmup`` steps,
which build or load whatever the setting caches (the teacher caches are built once per teacher and
stored; the first run of a cached setting builds them and says so), then resumes for ``--steps``
more, and prints the seconds per step of those alone (``fit``'s own clock, loading excluded) and
their ratio to the plain step. Settings: ``baseline`` and every tag of ``recipes.RECIPES``,
each with the cache its recipe uses; ``<tag>-live`` runs the teacher forward in every step,
``<tag>-cached`` reads the caches; the ratio is to the first ``baseline``. Runs go to a temporary
folder and leave no results row. Compare figures only from one call, and name ``baseline`` first and
last to see whether the machine's load moved during it.

``--amp`` measures each setting under each precision named: ``budget`` (default: what training
uses here, ``budgets.student_amp``), ``float32``, or ``bf16`` — autocast bf16 even on a CPU without
native bf16 (``loop.cpu_has_native_bf16``), to see what training's float32 fallback saves there.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch


def step_seconds(setting: str, mode: str, student: str, warmup: int, steps: int, out: Path, teacher,
                 amp: str = "budget") -> float:
    """Seconds per training step of ``setting`` after ``warmup`` steps (see the module docstring);
    ``teacher``: the frozen teacher the KD settings distil from."""
    from posekd_lib.train.budgets import budget, student_amp, training_set
    from posekd_lib.data.device_data import shuffled_loader
    from posekd_lib.train.experiments import _device, _trainee, build_loss, build_student_model
    from posekd_lib.train.recipes import RECIPES, kd_recipe
    from posekd_lib.train import fit, loop

    tag, _, cache = setting.partition("-")
    if tag != "baseline" and tag not in RECIPES:
        raise SystemExit(f"--settings {setting!r}: use baseline or one of {sorted(RECIPES)}, "
                         "optionally with -live or -cached")
    if cache not in ("", "live", "cached"):
        raise SystemExit(f"--settings {setting!r}: the suffix is -live or -cached, not -{cache}")
    b = budget(mode)
    torch.manual_seed(0)
    model = build_student_model(student)
    if tag == "baseline":
        made = build_loss("mse")
    else:
        overrides = {} if not cache else {"teacher_cache": cache == "cached"}
        made = kd_recipe(tag, teacher, student, mode, **overrides)(model, warmup + steps)
    net, loss_fn = _trainee(model, made)
    loader = shuffled_loader(training_set(b), b.batch_size, b.loader, _device(b.device), b.num_workers)
    kw = dict(loss_fn=loss_fn, lr=b.lr, device=b.device, out_dir=out, run_name=setting, threads=b.threads,
              progress=False, channels_last=b.channels_last, save_every_steps=warmup,
              amp={"budget": student_amp(student, b), "float32": None, "bf16": "bf16"}[amp])
    optimizer = torch.optim.Adam(net.parameters(), lr=b.lr)
    native = loop.cpu_has_native_bf16
    if amp == "bf16":       # bf16 as it is, native or emulated: no float32 fallback for this measurement
        loop.cpu_has_native_bf16 = lambda: True
    try:
        before = fit(net, loader, max_steps=warmup, optimizer=optimizer, **kw).train_time_s
        after = fit(net, loader, max_steps=warmup + steps, optimizer=optimizer, **kw).train_time_s
    finally:
        loop.cpu_has_native_bf16 = native
    for hooked in (net, loss_fn):
        if hasattr(hooked, "remove"):
            hooked.remove()
    return (after - before) / steps


def main(argv=None) -> int:
    from posekd_lib.config import get_mode, set_torch_threads
    from posekd_lib.distill import freeze
    from posekd_lib.models.teachers import load_teacher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: $POSEKD_MODE, else workshop)")
    ap.add_argument("--student", default="squeezenet")
    ap.add_argument("--settings", nargs="+", default=["baseline", "feature-live", "feature-cached"])
    ap.add_argument("--warmup", type=int, default=20, help="steps before the clock starts")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amp", nargs="+", default=["budget"], choices=("budget", "float32", "bf16"),
                    help="precisions to measure each setting in (bf16: even where it is emulated)")
    args = ap.parse_args(argv)
    mode = get_mode(args.mode)
    set_torch_threads(args.threads)
    os.environ["POSEKD_THREADS"] = str(args.threads)   # the budget's threads, which fit sets
    teacher = (freeze(load_teacher(mode=mode)[0]) if any(not s.startswith("baseline") for s in args.settings)
               else None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(args.settings):    # a setting named twice (load drift) runs twice
            for amp in args.amp:
                name = setting if args.amp == ["budget"] else f"{setting} ({amp})"
                rows.append((name, step_seconds(setting, mode, args.student, args.warmup, args.steps,
                                                Path(tmp) / f"{i}_{amp}", teacher, amp)))
                print(f"  {name}: {rows[-1][1]:.3f} s/step", flush=True)
    plain = next((s for setting, s in rows if setting.split(" ")[0] == "baseline"), None)
    print(f"\nmode {mode}, student {args.student}, {args.threads} thread(s), {args.steps} timed steps after "
          f"{args.warmup}")
    print(f"{'setting':<22}{'s/step':>10}{'x plain':>10}")
    for setting, s in rows:
        print(f"{setting:<22}{s:>10.3f}{(f'{s / plain:.2f}' if plain else '-'):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
