"""Long-budget reference runs on a GPU: the teacher and the notebooks' configs, trained by the same code.

    python scripts/train_reference.py teacher  --out OUT [--teacher-seconds 200] [--steps 3000]
    python scripts/train_reference.py students --out OUT [--steps 3000]

``teacher``: generates the embedded workshop dataset (all cores), trains the demo teacher
``demo_w16_128x96_gpu`` with ``scripts/train_teacher.py`` (from T3's weights, HRNet's augmentation,
batch 256, bf16, crops cut on the GPU, epochs from a throughput probe) and, beside it, the SqueezeNet
baseline (``configs/baseline_squeezenet.yaml``) for seeds 0, 1 and 2. ``students``: the distilled
configs (``fpd_squeezenet.yaml`` and ``feature_squeezenet.yaml`` for seeds 0-2, ``ai8x_tiny_fpd.yaml``
for seed 0) from the mode's demo teacher. Every student run has the same budget: ``--steps`` steps of
``--batch-size`` crops, light augmentation, lr 2e-3 (``docs/experiments.md``, section 6), named
``ref_<config name>`` so it never mixes with a notebook's live run of the same config.

Each job runs as its own process (``python -m posekd_lib.run ... --device cuda --loader device``),
logging to ``OUT/logs``; the ones still running at ``--deadline-s`` are stopped (their folders keep a
resumable ``latest.pt``). Then ``OUT`` receives the teacher's weights, card and curve, and
``reference_runs.tar.gz``: per run its config, recipe, history, metrics and an fp16 copy of the
trained weights (``model_fp16.pt``): ``posekd_lib.reference.install`` puts them under ``reference/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEACHER_NAME = "demo_w16_128x96_gpu"
TEACHER_INIT = "hrnet_pose/weights/demo_w16_128x96_ft2.pt"
BASELINES = [("baseline_squeezenet", s) for s in (0, 1, 2)]
DISTILLED = [(c, s) for c in ("fpd_squeezenet", "feature_squeezenet") for s in (0, 1, 2)] + [("ai8x_tiny_fpd", 0)]


def _env(threads: int, mode: str) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "POSEKD_MODE": mode, "POSEKD_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}


def _student_cmd(config: str, seed: int, steps: int, batch_size: int, mode: str, device: str) -> list[str]:
    name = "ref_" + config.rsplit("_", 1)[0] if not config.startswith("ai8x") else "ref_" + config
    sets = [f"seed={seed}", f"name={name}", f"optim.batch_size={batch_size}", "optim.lr=0.002",
            "augmentation=light"]
    if config.startswith("ai8x"):
        sets += [f"optim.steps={steps}", f"qat.steps={steps // 4}"]
    else:
        sets += [f"optim.steps={steps}"]
    return [sys.executable, "-m", "posekd_lib.run", f"configs/{config}.yaml", "--mode", mode, "--device", device,
            "--loader", "device", "--quiet", "--set", *sets]


def _teacher_cmd(seconds: float, mode: str, device: str, name: str, batch_size: int) -> list[str]:
    return [sys.executable, "scripts/train_teacher.py", "--config", "w16_128x96", "--name", name, "--mode", mode,
            "--init-from", TEACHER_INIT, "--device", device, "--loader", "device", "--batch-size", str(batch_size),
            "--lr", "1e-3", "--aug", "hrnet", "--amp", "bf16", "--threads", "4", "--time-budget-s", str(seconds),
            "--run-dir", str(REPO / "runs" / "teacher-runs"),
            "--note", "trained on one H200 GPU from demo_w16_128x96_ft2 (T3) with HRNet's augmentation, "
                      "crops cut on the GPU (posekd_lib.device_data), epochs from a throughput probe"]


def _run_jobs(jobs: dict[str, list[str]], logs: Path, deadline: float, threads: int, mode: str) -> dict[str, int | None]:
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in jobs.items():
        log = open(logs / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=_env(threads, mode), stdout=log, stderr=subprocess.STDOUT), log)
        print(f"[{time.strftime('%H:%M:%S')}] started {name}: {' '.join(cmd[1:])}", flush=True)
    codes: dict[str, int | None] = {}
    while len(codes) < len(procs):
        for name, (p, log) in procs.items():
            if name not in codes and p.poll() is not None:
                codes[name] = p.returncode
                log.close()
                print(f"[{time.strftime('%H:%M:%S')}] {name} exited {p.returncode}", flush=True)
        if time.time() > deadline:
            for name, (p, log) in procs.items():
                if name not in codes:
                    p.terminate()
                    p.wait(timeout=30)
                    codes[name] = None
                    log.close()
                    print(f"[{time.strftime('%H:%M:%S')}] {name} stopped at the deadline", flush=True)
        time.sleep(2)
    return codes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("teacher", "students"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reference-out")))
    ap.add_argument("--steps", type=int, default=3000, help="training steps of every student run")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--teacher-seconds", type=float, default=200.0)
    ap.add_argument("--deadline-s", type=float, default=300.0, help="stop the jobs still running after this")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per student job")
    ap.add_argument("--mode", default="workshop", help="the dataset (quick: a smoke test of this script)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--teacher-name", default=TEACHER_NAME)
    ap.add_argument("--teacher-batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    os.environ["POSEKD_MODE"] = args.mode
    from posekd_lib.synth import ensure_embedded_dataset

    ds = ensure_embedded_dataset(args.mode, num_workers=os.cpu_count() or 2, progress=False)
    digest = hashlib.sha1(ds.train.ann_file.read_bytes()).hexdigest()[:12]
    print(f"[{time.strftime('%H:%M:%S')}] dataset ready in {time.time() - t0:.0f} s (train annotations sha1 "
          f"{digest})", flush=True)

    jobs = {}
    if args.phase == "teacher":
        jobs["teacher"] = _teacher_cmd(args.teacher_seconds, args.mode, args.device, args.teacher_name,
                                       args.teacher_batch_size)
        runs = BASELINES
    else:
        runs = DISTILLED
    for config, seed in runs:
        jobs[f"{config}_s{seed}"] = _student_cmd(config, seed, args.steps, args.batch_size, args.mode, args.device)
    logs = REPO / "runs" / f"reference-logs-{args.phase}"
    codes = _run_jobs(jobs, logs, t0 + args.deadline_s, args.threads, args.mode)

    if args.phase == "teacher":
        for suffix in (".pt", ".json"):
            f = REPO / "hrnet_pose" / "weights" / f"{args.teacher_name}{suffix}"
            if f.is_file():
                (args.out / f.name).write_bytes(f.read_bytes())
        curve = REPO / "images" / f"{args.teacher_name}_curve.png"
        if curve.is_file():
            (args.out / curve.name).write_bytes(curve.read_bytes())
    from posekd_lib.config import run_paths
    from posekd_lib.reference import pack_runs

    packed = pack_runs(run_paths(args.mode).checkpoints, args.out / "reference_runs.tar.gz")
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    summary = {"phase": args.phase, "codes": codes, "runs": packed, "steps": args.steps,
               "batch_size": args.batch_size, "wall_s": round(time.time() - t0, 1), "dataset_sha1": digest}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
