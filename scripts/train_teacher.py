"""Train the shipped demo teacher (an HRNet on the embedded dataset) reproducibly, with resume.

    python scripts/train_teacher.py --config w16_128x96 --epochs 40 --aug light --amp bf16
    python scripts/train_teacher.py --config w16_128x96 --epochs 40 --device cuda
    python scripts/train_teacher.py --name demo_w16_128x96_x4 --init-from hrnet_pose/weights/demo_w16_128x96_ft2.pt \
        --extra-train-images 11100 --epochs 3 --lr 1e-3 --amp bf16 --threads 1
    python scripts/train_teacher.py --name demo_w16_128x96_gpu --init-from hrnet_pose/weights/demo_w16_128x96_ft2.pt \
        --device cuda --loader device --batch-size 256 --aug hrnet --amp bf16 --time-budget-s 240

Checkpoints go to ``--run-dir`` (default ``~/.cache/posekd/teacher-runs/<name>``, outside the
clone, so an interrupted run resumes from there in a later session). Every ``--eval-every``
steps the model is scored on a fixed validation subset (the learning curve of
``benchmarks/bench_learning.py``: COCO AP with flip test and mean OKS on the first
``--val-images`` images); the best of those checkpoints is exported in fp16 to
``hrnet_pose/weights/<name>.pt`` with a ``<name>.json`` card (config, recipe, command, seed, train
time, the curve and the AP on the whole validation split) and the curve is drawn into
``images/<name>_curve.png``.

On a GPU, ``--loader device`` cuts the training crops on the GPU a whole batch at once
(:class:`posekd_lib.device_data.DeviceCrops`); ``--time-budget-s`` replaces ``--epochs`` by as many
epochs as a short throughput probe says fit that many seconds (the card records both).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def probe_seconds_per_step(model, loader, device, amp, lr, steps: int = 15) -> float:
    """Median seconds of one training step (steps 5..15 of a throwaway copy), plus 25 % for what
    ``fit`` adds (its divergence checks, logging, checkpoints, the curve's evaluations)."""
    import copy
    import statistics

    import torch

    from posekd_lib.losses import batch_loss

    net = copy.deepcopy(model).to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn, times, it = batch_loss(), [], iter(loader)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps):
            t = time.perf_counter()
            batch = next(it, None)
            if batch is None:                    # a small dataset: start the loader again
                it = iter(loader)
                batch = next(it)
            image = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            batch = {**batch, "target": batch["target"].to(device), "target_weight": batch["target_weight"].to(device)}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(image), batch)
            loss = loss[0] if isinstance(loss, tuple) else loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss)
            times.append(time.perf_counter() - t)
    return 1.25 * statistics.median(times[5:])


def main(argv=None) -> int:
    import torch

    from hrnet_pose.checkpoint import load_pose_checkpoint, save_fp16_state_dict
    from hrnet_pose.configs import load_configs
    from hrnet_pose.hrnetpose_model import get_pose_net
    from posekd_lib.data import TopDownDataset, dataset_splits
    from posekd_lib.device_data import shuffled_loader
    from posekd_lib.evaluation import curve_evaluator, evaluate_topdown, first_images
    from posekd_lib.train import History, fit, load_checkpoint
    from posekd_lib.plotting import learning_curves

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="w16_128x96")
    ap.add_argument("--name", default=None, help="weights name (default demo_<config>)")
    ap.add_argument("--mode", default="workshop", help="which embedded dataset to train on")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--aug", default="light", help="augmentation preset (posekd_lib.data.AUGMENTATIONS)")
    ap.add_argument("--amp", default=None, help="bf16: autocast on the CPU (AMX / AVX512-BF16) or the GPU")
    ap.add_argument("--eval-every", type=int, default=500, help="steps between learning-curve points")
    ap.add_argument("--val-images", type=int, default=150, help="images of the curve's validation subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from these weights (e.g. a shipped fp16 teacher) instead of from scratch; "
                         "ignored when the run folder already holds a checkpoint to resume")
    ap.add_argument("--extra-train-images", type=int, default=0,
                    help="also train on this many more generated images (the ones that follow the train split's; "
                         "the students' train and val splits are unchanged)")
    ap.add_argument("--note", default=None, help="free text stored in the card (e.g. how a resumed run was split)")
    ap.add_argument("--loader", default="cpu", choices=("cpu", "device"),
                    help="device: cut the crops on the training device, a batch at once (for a GPU)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the cpu loader")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="train as many epochs as a 15-step throughput probe says fit this many seconds")
    ap.add_argument("--export-only", action="store_true",
                    help="export the run folder's best checkpoint (card, curve) without training")
    args = ap.parse_args(argv)

    name = args.name or f"demo_{args.config}"
    run_root = args.run_dir or Path.home() / ".cache" / "posekd" / "teacher-runs"
    cfg = load_configs(args.config)
    input_size, heatmap_size, sigma = tuple(cfg.MODEL.IMAGE_SIZE), tuple(cfg.MODEL.HEATMAP_SIZE), cfg.MODEL.SIGMA
    splits = dataset_splits(args.mode)
    train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, input_size, heatmap_size, sigma, train=True,
                              aug=args.aug)
    dataset_text = f"posekd embedded ({args.mode}) train split"
    if args.extra_train_images:
        if args.loader == "device":
            ap.error("--extra-train-images needs --loader cpu (DeviceCrops cuts one TopDownDataset)")
        from torch.utils.data import ConcatDataset

        from posekd_lib.synth import ensure_extra_train

        extra = ensure_extra_train(args.mode, args.extra_train_images)
        train_ds = ConcatDataset([train_ds, TopDownDataset(extra.ann_file, extra.img_dir, input_size, heatmap_size,
                                                           sigma, train=True, aug=args.aug)])
        dataset_text += f" + the {args.extra_train_images} images that follow it (synth.ensure_extra_train)"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    loader = shuffled_loader(train_ds, args.batch_size, args.loader, device, args.workers)
    print(f"{name}: {args.config}, {len(train_ds)} training persons, {len(loader)} steps/epoch", flush=True)

    torch.manual_seed(args.seed)
    model = get_pose_net(cfg, is_train=True)
    if args.init_from is not None and History.steps_done(run_root / name) == 0:
        load_pose_checkpoint(model, args.init_from)   # strict: names the file and the keys that differ
        print(f"{name}: starting from {args.init_from}", flush=True)
    img_ids = first_images(splits.val.ann_file, args.val_images)
    evaluate = curve_evaluator(splits.val, img_ids, input_size, heatmap_size, sigma)

    epochs, probe = args.epochs, None
    info_file = run_root / name / "budget.json"
    if info_file.is_file():          # a resumed budgeted run keeps the epochs it chose
        probe = json.loads(info_file.read_text())
        epochs = probe["epochs"]
    elif args.time_budget_s and not args.export_only:
        s_step = probe_seconds_per_step(model, loader, device, args.amp, args.lr)
        epochs = max(1, int(args.time_budget_s / (s_step * len(loader))))
        probe = {"seconds_per_step": round(s_step, 4), "time_budget_s": args.time_budget_s, "epochs": epochs}
        info_file.parent.mkdir(parents=True, exist_ok=True)
        info_file.write_text(json.dumps(probe))
        print(f"{name}: probe {s_step:.3f} s/step -> {epochs} epochs in {args.time_budget_s:g} s", flush=True)
    eval_every = args.eval_every if probe is None else max(50, epochs * len(loader) // 8)

    steps_before = History.steps_done(run_root / name)
    t0 = time.perf_counter()
    if not args.export_only:
        history = fit(model, loader, epochs=epochs, lr=args.lr, out_dir=run_root, run_name=name,
                      save_every_steps=100, evaluate_fn=evaluate, best_metric="AP", seed=args.seed,
                      device=device, threads=args.threads, log_every=20, amp=args.amp,
                      eval_every_steps=eval_every, channels_last=True)
        history.save(run_root / name / "history.json")
    else:
        history = History.load(run_root / name / "history.json")
    wall = time.perf_counter() - t0
    card_file = REPO / "hrnet_pose" / "weights" / f"{name}.json"
    if history.last_step == steps_before and card_file.is_file():  # only re-exported: keep the card's time
        wall = json.loads(card_file.read_text()).get("train_wall_time_s_this_session", wall)
    if args.no_export:
        return 0

    best = run_root / name / "best.pt"
    extras = load_checkpoint(best if best.is_file() else run_root / name / "latest.pt", model)
    model.to(device)
    metrics = evaluate_topdown(model, splits.val, input_size, heatmap_size, sigma, flip_test=True, device=device)
    out = REPO / "hrnet_pose" / "weights" / f"{name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_fp16_state_dict(model.cpu(), out)
    reloaded = load_pose_checkpoint(get_pose_net(cfg, is_train=False), out)
    card = {
        "name": name, "config": args.config, "input_size_wh": list(input_size), "heatmap_size_wh": list(heatmap_size),
        "sigma": sigma, "dataset": dataset_text, "train_persons": len(train_ds),
        "epochs": epochs, "batch_size": args.batch_size, **({"throughput_probe": probe} if probe else {}), "lr": args.lr, "seed": args.seed,
        "aug": args.aug, "amp": args.amp, "init_from": None if args.init_from is None else str(args.init_from),
        "best_step": extras.get("step") if isinstance(extras, dict) else None,
        "best_step_val_subset_AP": round(float(extras["metrics"]["AP"]), 4)
        if isinstance(extras, dict) and "metrics" in extras else None,
        "curve": {"val_images": len(img_ids), "points": [
            {"step": e["step"], "samples": e["step"] * args.batch_size,
             **{k: round(float(e[k]), 4) for k in ("AP", "AP50", "AP75", "mean_OKS")}} for e in history.evals]},
        "command": "python scripts/train_teacher.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "val_metrics_flip_gt_boxes": {k: round(float(v), 4) for k, v in metrics.items()},
        "train_wall_time_s_this_session": round(wall, 1), "device": str(device),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()), "file_bytes": out.stat().st_size,
    }
    if args.note:
        card["note"] = args.note
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    learning_curves([{"name": name, "points": card["curve"]["points"]}],
                    f"{name}: learning curve on {len(img_ids)} validation images").savefig(
        REPO / "images" / f"{name}_curve.png", dpi=110)
    print(json.dumps(card, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
