"""Notebooks 03-04's distillation comparison over seeds: AP of baseline and KD students, gap closed.

    python benchmarks/bench_kd.py                          # workshop mode, SqueezeNet, seeds 0 and 1
    python benchmarks/bench_kd.py --seeds 0 1 2 --student mobilenetv3
    python benchmarks/bench_kd.py --settings feature --set distill.terms.0.weight=0.25 --name b025 --seeds 0
    python benchmarks/bench_kd.py --settings feature_cached_squeezenet --seeds 0 1 2   # any distil config
    python benchmarks/bench_kd.py --settings feature --steps 1200 --seeds 0      # equal steps, another budget
    python benchmarks/bench_kd.py --settings feature --labelled 0.1 --unlabelled  # few labels, teacher labels the rest
    python benchmarks/bench_kd.py --mode quick             # seconds: checks that everything runs

Every setting (``baseline`` and the tags of ``recipes.RECIPES``, or any distillation config of
``configs/``) is its config file, run as ``python -m posekd_lib.run`` runs it (``run.launch``) with the
seed, student, steps and labels of the command line set on it, and trained with the
mode's budget (same batch, data, augmentation, learning rate; only the loss and the seed change;
in workshop mode the same training *time*: 3,000 steps for the baseline and the logits settings,
``Budget.feature_steps`` = 1,500 for ``feature``, whose step also runs the teacher) through
the configs the notebooks run, so runs the notebooks already made are reused from the cache and
missing ones are trained (in workshop mode 6-7 min per run on 2 idle cores). ``--steps N`` gives
every run N steps instead (equal steps, tags get ``_<N>``). For each
setting it prints COCO AP (flip test, GT boxes), AP50, AP75 and PCK@0.2 as mean ± half the range
over the seeds, and the fraction of the teacher-baseline AP gap closed, computed per seed against
that seed's baseline and then averaged.

A second table separates keypoint placement from ranking (``experiments.localization_summary``):
mean OKS of each person with its own ground truth, the share with OKS >= 0.5, and ``AP_oracle``,
the AP if every person were ranked by its true OKS -- the most that better scores alone could give --
and ``rank_corr``, the Spearman correlation of each model's own person scores with that OKS.
``--set key=value`` overrides a key of every distillation config (``distill.terms.0.weight=0.25``,
``distill.terms.0.pairs='{neck.2: stage3}'``, values read as YAML) and needs ``--name`` to name the
variant: its runs are ``<setting>-<name>`` (``feature-b025``).
``--labelled F`` keeps the keypoints of a fraction F of the training images for every run (tags get
``_l<percent>``); with ``--unlabelled`` the distilled runs also see the other images' persons without
keypoints, which only the teacher labels (tags get ``_l<percent>u``); the baseline cannot use them.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


from posekd_lib.config import get_mode
from posekd_lib.data.datasets import dataset_splits
from posekd_lib.distill import freeze
from posekd_lib.evaluation.coco import gap_closed
from posekd_lib.train.experiments import RECIPES, evaluate_teacher, label_tag, localization_summary
from posekd_lib.run import config_path, launch
from posekd_lib.runs.runconfig import apply_overrides, from_yaml
from posekd_lib.runs.table import budget_trend, runs_csv, runs_table
from posekd_lib.models.teachers import load_teacher

METRICS = ("AP", "AP50", "AP75", "PCK@0.2")


def setting_config(setting: str) -> tuple[str, str]:
    """``(config name, run tag)`` of a ``--settings`` item: a recipe tag (``kl``: ``configs/kl_squeezenet.yaml``)
    or a distillation config's name (``feature_cached_squeezenet``); the tag is the config's ``name``."""
    config = RECIPES.get(setting, setting)
    cfg = from_yaml(config_path(config))
    if "distil" not in cfg.stages:
        raise SystemExit(f"--settings {setting!r}: configs/{config}.yaml trains no distilled student")
    return config, cfg.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: $POSEKD_MODE, else workshop)")
    ap.add_argument("--student", default="squeezenet")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--settings", nargs="+", default=list(RECIPES), help=f"of {list(RECIPES)}")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override keys of the distillation configs (needs --name)")
    ap.add_argument("--name", default=None, help="names the --set variant: runs <setting>-<name>")
    ap.add_argument("--steps", type=int, default=None, help="another budget for every run (tags get _<steps>)")
    ap.add_argument("--labelled", type=float, default=1.0, help="fraction of training images with keypoints")
    ap.add_argument("--unlabelled", action="store_true", help="distilled runs also train on the other images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    mode = get_mode(args.mode)
    if args.name is not None and not args.name.replace("_", "").replace("-", "").isalnum():
        ap.error(f"--name {args.name!r}: use letters, digits, '-' and '_' (it becomes part of a folder name)")
    if args.set and args.name is None:
        ap.error("--set needs --name (the variant's runs are <setting>-<name>)")
    suffix = f"-{args.name}" if args.name is not None else ""
    steps = "" if args.steps is None else f"_{args.steps}"
    settings = [(config, tag, any(t.kind == "hint" for t in from_yaml(config_path(config)).distill.terms))
                for config, tag in map(setting_config, args.settings)]       # hinted: the student's layer pairs
    if args.unlabelled and args.labelled >= 1:
        ap.error("--unlabelled needs --labelled below 1")
    labels = label_tag(args.labelled)                        # the baseline's data
    data = label_tag(args.labelled, args.unlabelled)         # the distilled runs' data
    torch.set_num_threads(args.threads)

    t = evaluate_teacher(mode, progress=False)
    teacher, _ = load_teacher(mode=mode)
    freeze(teacher)
    budget = [*([f"optim.steps={args.steps}"] if args.steps else []),
              *([f"data.labelled={args.labelled}"] if args.labelled < 1 else [])]
    hint_pairs = [] if args.student == "squeezenet" else ["distill.terms.0.pairs={}"]  # the student's own (registry)
    runs: dict[str, list] = {"baseline": []}
    for seed in args.seeds:
        common = [f"seed={seed}", f"model.student={args.student}", *budget]
        runs["baseline"].append(launch("baseline_squeezenet", [f"name=baseline{labels}{steps}", *common], mode,
                                       progress=False, show=False))
        for config, tag, hinted in settings:
            sets = [f"name={tag}{suffix}{data}{steps}", *common, *(hint_pairs if hinted else []),
                    *(["data.unlabelled=true"] if args.unlabelled else []), *args.set]
            runs.setdefault(tag + suffix + data, []).append(launch(config, sets, mode, teacher=teacher,
                                                                   progress=False, show=False))
            torch.set_num_threads(args.threads)

    val = dataset_splits(mode).val
    size = runs["baseline"][0].budget.input_size
    t_ap = t.metrics["AP"]
    t_loc = localization_summary(t.results, val, size)
    print(f"mode {mode}, student {args.student}, seeds {args.seeds}, "
          f"keypoints of {100 * args.labelled:g} % of the training images"
          f"{' (KD runs also see the rest, unlabelled)' if args.unlabelled else ''}; "
          f"teacher {t.name} AP {t_ap:.4f} "
          f"(AP50 {t.metrics['AP50']:.3f}, PCK@0.2 {t.metrics['PCK@0.2']:.3f})")
    w = max(14, *(len(tag) + 2 for tag in runs))   # the setting column fits the longest tag
    print(f"{'setting':{w}s}{'steps':>7s}" + "".join(f"{m:>18s}" for m in METRICS) + f"{'gap closed':>18s}")
    for tag, rs in runs.items():
        ms = [r.metrics for r in rs]
        closed = np.array([gap_closed(x["AP"], b.metrics["AP"], t_ap) for x, b in zip(ms, runs["baseline"])])
        gc = "" if tag == "baseline" else f"{100 * closed.mean():7.1f} % ± {50 * np.ptp(closed):.1f}"
        print(f"{tag:{w}s}{rs[0].row['steps']:>7d}" + "".join(f"{_cell([x[m] for x in ms]):>18s}" for m in METRICS)
              + f"{gc:>18s}")
    print("per seed AP: " + "; ".join(f"{tag} " + ", ".join(f"{r.metrics['AP']:.4f}" for r in rs)
                                      for tag, rs in runs.items()))

    loc_keys = ("mean_OKS", "OKS>=0.5", "AP_oracle", "rank_corr")
    print(f"\nplacement vs ranking (teacher: " + ", ".join(f"{k} {t_loc[k]:.3f}" for k in loc_keys) + ")")
    print(f"{'setting':{w}s}" + "".join(f"{k:>18s}" for k in loc_keys))
    for tag, rs in runs.items():
        locs = [localization_summary(r.results, val, size) for r in rs]
        print(f"{tag:{w}s}" + "".join(f"{_cell([x[k] for x in locs]):>18s}" for k in loc_keys))

    table = runs_table(mode)
    student = [f"model.student={args.student}", f"data.mode={mode}"]
    baseline_cfg = apply_overrides(from_yaml(config_path("baseline_squeezenet")), student)
    for config, tag, hinted in ([] if labels else settings):  # the budget trend is for runs on every label
        kd_cfg = apply_overrides(from_yaml(config_path(config)), [*student, *(hint_pairs if hinted else []), *args.set])
        print(f"\n{tag}{suffix} vs baseline at every budget in {runs_csv(mode).name} (mean ± half the range):")
        print(f"{'steps':>7s}{'seeds':>8s}{'baseline AP':>20s}{'KD AP':>20s}{'gap closed':>18s}")
        for b in budget_trend(table, kd_cfg, t_ap, baseline_cfg):
            print(f"{b['steps']:7d}{len(b['seeds']):8d}{b['baseline_AP']:11.4f} ± {b['baseline_AP_pm']:.4f}"
                  f"{b['kd_AP']:11.4f} ± {b['kd_AP_pm']:.4f}{100 * b['closed']:9.1f} % ± {100 * b['closed_pm']:.1f}")
    return 0


def _cell(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():8.4f} ± {np.ptp(v) / 2:.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
