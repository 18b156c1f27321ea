"""Learning curves: COCO AP, AP50, AP75 and mean OKS against training samples, for a model + recipe.

    python benchmarks/bench_learning.py --model squeezenet --aug light --steps 2000 --eval-every 250
    python benchmarks/bench_learning.py --model w16_128x96 --aug light --amp bf16 --steps 6000
    python benchmarks/bench_learning.py --plot light_squeezenet hrnet_squeezenet --out images/curves.png

One run trains ``--model`` (a student name of ``posekd_lib.experiments`` or an HRNet config) from
scratch with ``fit`` and evaluates it every ``--eval-every`` steps on a fixed validation subset (the
first ``--val-images`` images of the mode's validation split, ground-truth boxes, flip test,
COCOeval), so recipes are compared at the same points of the same images. The schedule is the
recipe's over ``--steps`` (cosine by default), so a point in the middle of a curve is not what a
shorter run would reach: compare shorter budgets with runs of their own. Runs are resumable and
cached under ``runs/<mode>/curves/<name>``; ``--plot`` draws stored curves into one figure.
Recipe decisions are made on these curves, with the pass mark written down before the run
(``docs/experiments.md``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


from posekd_lib.config import atomic_write, get_mode, run_paths, set_torch_threads

CURVE_KEYS = ("AP", "AP50", "AP75", "mean_OKS")


def build_model(name: str) -> tuple[torch.nn.Module, dict]:
    """A student by ``experiments.STUDENTS`` name or an HRNet by config name, from scratch."""
    from posekd_lib.experiments import STUDENTS, build_student_model

    if name in STUDENTS:
        return build_student_model(name), {}
    from hrnet_pose.configs import load_configs
    from hrnet_pose.hrnetpose_model import get_pose_net

    cfg = load_configs(name)
    m = cfg.MODEL
    sizes = {"input_size": tuple(int(v) for v in m.IMAGE_SIZE), "heatmap_size": tuple(int(v) for v in m.HEATMAP_SIZE),
             "sigma": float(m.SIGMA)}
    return get_pose_net(cfg, is_train=True), sizes


def run_curve(args) -> dict:
    from posekd_lib.data import TopDownDataset, augmentation, dataset_splits
    from posekd_lib.evaluation import curve_evaluator, first_images
    from posekd_lib.experiments import budget
    from posekd_lib.train import fit

    mode = get_mode(args.mode)
    b = budget(mode)
    set_torch_threads(args.threads)
    torch.manual_seed(args.seed)
    model, sizes = build_model(args.model)
    input_size = sizes.get("input_size", b.input_size)
    heatmap_size = sizes.get("heatmap_size", b.heatmap_size)
    sigma = args.sigma or sizes.get("sigma", b.sigma)
    splits = dataset_splits(mode)
    aug = augmentation(args.aug)
    train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, input_size, heatmap_size, sigma,
                              train=True, aug=aug)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers)
    img_ids = first_images(splits.val.ann_file, args.val_images)
    name = args.name or f"{args.aug}_{args.model}"
    out_dir = run_paths(mode).root / "curves"
    recipe = {"model": args.model, "aug": args.aug, "lr": args.lr, "batch": args.batch, "steps": args.steps,
              "amp": args.amp, "sigma": sigma, "seed": args.seed, "input_size": list(input_size),
              "heatmap_size": list(heatmap_size), "val_images": len(img_ids), "scheduler": args.scheduler,
              **({"loss": args.loss} if args.loss != "mse" else {})}
    info_file = out_dir / name / "curve.json"
    if info_file.is_file() and json.loads(info_file.read_text())["recipe"] != recipe:
        raise SystemExit(f"{info_file} holds a curve of another recipe; pass another --name")
    t0 = time.perf_counter()
    from posekd_lib.experiments import build_loss

    history = fit(model, loader, loss_fn=build_loss(args.loss), max_steps=args.steps, lr=args.lr, scheduler=args.scheduler, amp=args.amp,
                  device=args.device, out_dir=out_dir, run_name=name, seed=args.seed, threads=args.threads,
                  evaluate_fn=curve_evaluator(splits.val, img_ids, input_size, heatmap_size, sigma),
                  eval_every_steps=args.eval_every, save_every_steps=100, log_every=20,
                  channels_last=torch.device(args.device).type == "cpu", progress=not args.quiet)
    points = [{"step": e["step"], "samples": e["step"] * args.batch, **{k: e[k] for k in (*CURVE_KEYS, "eval_s")}}
              for e in history.evals]
    old = json.loads(info_file.read_text()) if info_file.is_file() else {}
    wall = old.get("train_wall_s", 0.0) + time.perf_counter() - t0
    curve = {"name": name, "recipe": recipe, "points": points, "train_wall_s": round(wall, 1),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    atomic_write(info_file, lambda f: json.dump(curve, f, indent=1), mode="w")
    return curve


def print_curve(curve: dict) -> None:
    print(f"\n{curve['name']}: {json.dumps(curve['recipe'])}")
    print("| step | samples | AP | AP50 | AP75 | mean OKS |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in curve["points"]:
        print(f"| {p['step']} | {p['samples']} | {p['AP']:.4f} | {p['AP50']:.3f} | {p['AP75']:.3f} | {p['mean_OKS']:.3f} |")
    print(f"train wall time {curve['train_wall_s'] / 60:.1f} min on {curve['threads']} threads")


def load_curve(name: str, mode: str | None = None) -> dict:
    f = run_paths(mode).root / "curves" / name / "curve.json"
    if not f.is_file():
        raise SystemExit(f"no stored curve {name!r} ({f})")
    return json.loads(f.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet")
    ap.add_argument("--aug", default="light", help="augmentation preset (posekd_lib.data.AUGMENTATIONS)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scheduler", default="cosine")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-images", type=int, default=150)
    ap.add_argument("--sigma", type=float, default=None)
    ap.add_argument("--loss", default="mse", help="experiments.LOSSES name (mse, awing, mse_ce)")
    ap.add_argument("--amp", default=None, help="bf16: autocast on the CPU (fast on AMX / AVX512-BF16 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--plot", nargs="*", default=None, help="plot these stored curves instead of training")
    ap.add_argument("--out", type=Path, default=None, help="PNG for --plot (default images/learning_curves.png)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if args.plot is not None:
        curves = [load_curve(n, args.mode) for n in args.plot]
        for c in curves:
            print_curve(c)
        from posekd_lib.plotting import learning_curves

        out = args.out or Path("images/learning_curves.png")
        learning_curves(curves, args.title).savefig(out, dpi=110)
        print(out)
        return
    print_curve(run_curve(args))


if __name__ == "__main__":
    main()
