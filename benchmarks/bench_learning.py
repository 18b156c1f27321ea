"""Learning curves of a run config: COCO AP, AP50, AP75 and mean OKS against training samples.

    python benchmarks/bench_learning.py baseline_squeezenet --steps 2000 --eval-every 250
    python benchmarks/bench_learning.py baseline_squeezenet --set augmentation=hrnet --name hrnet_squeezenet
    python benchmarks/bench_learning.py teacher_w16 --set model.options.init_from=null --steps 6000
    python benchmarks/bench_learning.py --plot curve_baseline_squeezenet hrnet_squeezenet --out images/curves.png

One curve is one config of ``configs/`` (a top-down student, or the HRNet teacher) run as
``python -m posekd_lib.run`` runs it (``run.launch``), with ``--steps``, ``--eval-every``, ``--seed``
and ``--set`` applied and named ``--name`` (default ``curve_<config>``): it trains from scratch (the
teacher config from its ``init_from``) and is evaluated every ``--eval-every`` steps on a fixed
validation subset (the first images of the mode's validation split: 100 for the students,
``experiments.CURVE_IMAGES``, 150 for the teacher; ground-truth boxes, flip test, COCOeval), so
recipes are compared at the same points of the same images. The schedule is the config's over
``--steps`` (cosine), so a point in the middle of a curve is not what a shorter run would reach:
compare shorter budgets with runs of their own. Runs are resumable like every config run; the curve
is also stored as ``runs/<mode>/curves/<name>/curve.json`` and ``--plot`` draws stored curves into one
figure. Recipe decisions are made on these curves, with the pass mark written down before the run
(``docs/experiments.md``; curves made before the configs, with 150 student images, keep their
numbers there).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from posekd_lib.config import atomic_write, get_mode, run_paths, set_torch_threads

CURVE_KEYS = ("AP", "AP50", "AP75", "mean_OKS")


def run_curve(args) -> dict:
    from posekd_lib.run import launch
    from posekd_lib.train import History

    mode = get_mode(args.mode)
    set_torch_threads(args.threads)
    name = args.name or f"curve_{args.config}"
    sets = [f"name={name}", f"seed={args.seed}", f"optim.steps={args.steps}", f"optim.eval_every={args.eval_every}",
            *args.set]
    run = launch(args.config, sets, mode=mode, progress=not args.quiet)
    if not hasattr(run, "history") and not hasattr(run, "card"):
        raise SystemExit(f"{args.config}: a MAX78000 run; its curve is in its _float folder's history.json "
                         "(scripts/train_reference.py ships them with their cards)")
    batch = run.batch_size if hasattr(run, "card") else run.budget.batch_size
    history = History.load(run.run_dir / "history.json")
    points = [{"step": e["step"], "samples": e["step"] * batch, **{k: e[k] for k in (*CURVE_KEYS, "eval_s")}}
              for e in history.evals]
    curve = {"name": name, "config": args.config, "sets": sets, "points": points,
             "train_wall_s": history.train_time_s, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "run_dir": run.run_dir.name}
    atomic_write(run_paths(mode).root / "curves" / name / "curve.json", lambda f: json.dump(curve, f, indent=1), mode="w")
    return curve


def print_curve(curve: dict) -> None:
    print(f"\n{curve['name']}: {json.dumps(curve.get('sets', curve.get('recipe')))}")
    print("| step | samples | AP | AP50 | AP75 | mean OKS |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in curve["points"]:
        print(f"| {p['step']} | {p['samples']} | {p['AP']:.4f} | {p['AP50']:.3f} | {p['AP75']:.3f} | {p['mean_OKS']:.3f} |")
    if curve.get("train_wall_s"):
        print(f"train time {curve['train_wall_s'] / 60:.1f} min on {curve['threads']} threads")


def load_curve(name: str, mode: str | None = None) -> dict:
    f = run_paths(mode).root / "curves" / name / "curve.json"
    if not f.is_file():
        raise SystemExit(f"no stored curve {name!r} ({f})")
    return json.loads(f.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="baseline_squeezenet", help="a configs/ name or a YAML path")
    ap.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                    help="config overrides, as python -m posekd_lib.run takes them")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--name", default=None, help="the run's name (default curve_<config>)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--plot", nargs="*", default=None, help="plot these stored curves instead of training")
    ap.add_argument("--out", type=Path, default=None, help="PNG for --plot (default images/learning_curves.png)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if args.plot is not None:
        curves = [load_curve(n, args.mode) for n in args.plot]
        for c in curves:
            print_curve(c)
        from posekd_lib.evaluation.plotting import learning_curves

        out = args.out or Path("images/learning_curves.png")
        learning_curves(curves, args.title).savefig(out, dpi=110)
        print(out)
        return
    print_curve(run_curve(args))


if __name__ == "__main__":
    main()
