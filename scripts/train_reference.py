"""Long-budget reference runs on the CPU: the notebooks' configs trained longer by the same code, shipped.

    python scripts/train_reference.py ai8x       [--float-steps 20000] [--qat-steps 2500] [--seed 0]
    python scripts/train_reference.py squeezenet [--steps 24000] [--seed 0]
    python scripts/train_reference.py bottomup   [--float-steps 20000] [--qat-steps 2500] [--seed 0]
                                                 [--set "model.options.input_size=[144, 112]"]
    python scripts/train_reference.py ship RUN_FOLDER [RUN_FOLDER ...]
    python scripts/train_reference.py chunk RUN_FOLDER [RUN_FOLDER ...]

``ai8x``: the MAX78000 student ``ai85posenet("tiny")`` on ground truth only
(``configs/ai8x_tiny_gt.yaml``) and with FPD from the demo teacher's cache
(``configs/ai8x_tiny_fpd.yaml``), float then QAT, side by side at the same steps.
``squeezenet``: the SqueezeNet baseline, the spatial KL (teacher cache) and hints + FPD, with the
live teacher or from the teacher caches (``baseline_squeezenet``, ``kl_squeezenet``,
``feature_squeezenet``, ``feature_cached_squeezenet``), at most two at once.
``bottomup``: the stride-4 bottom-up MAX78000 student ``ai85bottomup("tiny_s4")`` on ground truth
only and distilled from the teacher's keypoints (``bottomup_s4_gt``, ``bottomup_s4_kd``), and the
final design (``small_s4_d2``, soft KD targets: ``bottomup_final``), as ``ai8x``.
``--configs`` picks some configs of a phase.
Each run is ``python -m posekd_lib.run CONFIG --set name=ref_<config> ...`` on one thread
(``POSEKD_THREADS=1``: two runs share a 2-core machine), with a learning curve every
``--eval-every`` steps (AP on fixed validation images, in its ``history.json``). A run stopped at
any point (a session's end, ``--deadline-s``) keeps a resumable ``latest.pt`` in its folder, and a
run stopped at the deadline is saved into ``reference/chunks/`` (``--chunks``; commit it); the same
command continues it from there, on this machine or after a fresh clone (the chunk is copied back). Each finished run is shipped into ``reference/``
(``posekd_lib.runs.reference.ship``: fp16 weights, or float32 QAT weights, config, history, metrics and
``card.json`` with the command, the teacher's fingerprint, the CPU and the training time); commit
it at once. ``ship`` ships finished run folders by hand (runs started without this script), ``chunk``
saves unfinished ones.
Logs: ``runs/reference-logs/<run>.log``. Plans and pass marks: ``docs/experiments.md``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AI8X = ("ai8x_tiny_gt", "ai8x_tiny_fpd")
BOTTOM_UP = ("bottomup_s4_gt", "bottomup_s4_kd", "bottomup_final")
SQUEEZENET = ("baseline_squeezenet", "kl_squeezenet", "feature_squeezenet", "feature_cached_squeezenet")
PHASES = {"ai8x": AI8X, "squeezenet": SQUEEZENET, "bottomup": BOTTOM_UP}
MCU = AI8X + BOTTOM_UP           # float then QAT: two run folders each


def _env(threads: int, mode: str) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "POSEKD_MODE": mode, "POSEKD_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def run_name(config: str, tag: str | None = None) -> str:
    """``ref_<config>`` without the student suffix the run folder adds back (``ref_kl`` ->
    ``ref_kl_squeezenet_s0``); the MAX78000 configs keep theirs (``ref_ai8x_tiny_gt_s0_qat``).
    ``tag`` (``--tag``) names a variant of the config's run, so it is shipped beside the config's own
    (``ref_ai8x_tiny_fpd_small_s0_qat``) instead of over it."""
    return "ref_" + (config if config in MCU else config.rsplit("_", 1)[0]) + (f"_{tag}" if tag else "")


def student_cmd(config: str, args) -> list[str]:
    sets = [f"name={run_name(config, args.tag)}", f"seed={args.seed}", f"optim.eval_every={args.eval_every}"]
    if config in MCU:
        sets += [f"optim.steps={args.float_steps}", f"qat.steps={args.qat_steps}"]
    else:
        sets += [f"optim.steps={args.steps}"]
    sets += list(args.set or ())
    return [sys.executable, "-m", "posekd_lib.run", f"configs/{config}.yaml", "--mode", args.mode, "--quiet",
            "--set", *sets]


def folders(config: str, args) -> list[Path]:
    """The run folders a reference config's command writes (both phases of a MAX78000 run)."""
    from posekd_lib.config import run_paths

    root = run_paths(args.mode).checkpoints
    if config in MCU:
        return [root / f"{run_name(config, args.tag)}_s{args.seed}_{phase}" for phase in ("float", "qat")]
    student = config.rsplit("_", 1)[1]
    return [root / f"{run_name(config, args.tag)}_{student}_s{args.seed}"]


def card(cmd: list[str], args) -> dict:
    """What ``card.json`` says of a run besides the machine, its time and its teacher: its command."""
    shown = " ".join(c if " " not in c else repr(c) for c in ["python", *cmd[1:]])
    return {"command": f"POSEKD_THREADS={args.threads} {shown}",
            "note": f"trained on the CPU, {args.threads} thread(s) per run, {args.parallel} runs side by side "
                    "(scripts/train_reference.py)"}


def run_jobs(configs, args) -> dict[str, int | None]:
    """Run ``configs`` at most ``--parallel`` at once; ship each as it ends with exit code 0 (and
    drop its chunk). A run's chunk in ``--chunks`` is copied back before it starts; a run stopped at
    the deadline is saved there (commit it)."""
    from posekd_lib.runs.reference import drop_chunk, restore_chunk, save_chunk, ship

    logs = REPO / "runs" / "reference-logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(configs), {}, {}
    deadline = time.time() + args.deadline_s if args.deadline_s else None
    while pending or running:
        while pending and len(running) < args.parallel:
            config = pending.pop(0)
            cmd = student_cmd(config, args)
            for f in folders(config, args):
                if restore_chunk(f, args.chunks):
                    print(f"  resuming {f.name} from its chunk in {args.chunks}", flush=True)
            log = open(logs / f"{run_name(config, args.tag)}_s{args.seed}.log", "w")
            running[config] = (subprocess.Popen(cmd, cwd=REPO, env=_env(args.threads, args.mode), stdout=log,
                                                stderr=subprocess.STDOUT), log, cmd)
            print(f"[{time.strftime('%H:%M:%S')}] started {config}: {' '.join(cmd[1:])}", flush=True)
        for config, (p, log, cmd) in list(running.items()):
            if p.poll() is None:
                if deadline and time.time() > deadline:
                    p.terminate()
                    p.wait(timeout=60)
                    print(f"[{time.strftime('%H:%M:%S')}] {config} stopped at the deadline (resumable)", flush=True)
                    for f in folders(config, args):
                        if (f / "latest.pt").is_file():
                            print(f"  saved {save_chunk(f, args.chunks, card(cmd, args)['command'])}", flush=True)
                    codes[config] = None
                    log.close()
                    del running[config]
                continue
            log.close()
            del running[config]
            codes[config] = p.returncode
            print(f"[{time.strftime('%H:%M:%S')}] {config} exited {p.returncode}", flush=True)
            if p.returncode == 0:
                for f in ship(folders(config, args), args.dest, card=card(cmd, args)):
                    print(f"  shipped {f}", flush=True)
                    drop_chunk(f.name, args.chunks)
        time.sleep(5)
    return codes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=(*PHASES, "ship", "chunk"))
    ap.add_argument("folders", nargs="*", type=Path, help="ship: the finished run folders; chunk: unfinished ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--float-steps", type=int, default=20_000, help="ai8x, bottomup: float steps")
    ap.add_argument("--qat-steps", type=int, default=2_500, help="ai8x, bottomup: QAT steps")
    ap.add_argument("--steps", type=int, default=24_000, help="squeezenet: steps of every run")
    ap.add_argument("--eval-every", type=int, default=2_500, help="a learning-curve point every N steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once")
    ap.add_argument("--deadline-s", type=float, default=None, help="stop the runs still going after this")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="only these configs of the phase (e.g. baseline_squeezenet kl_squeezenet)")
    ap.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                    help="more config overrides for every run (e.g. 'model.options.input_size=[144, 112]')")
    ap.add_argument("--tag", default=None, help="a variant of the configs' runs (with --set): names and ships "
                    "them as ref_<config>_<tag>, beside the configs' own")
    ap.add_argument("--mode", default="workshop", help="the dataset (quick: a smoke test of this script)")
    ap.add_argument("--dest", type=Path, default=REPO / "reference", help="where finished runs are shipped")
    ap.add_argument("--command", default=None, help="chunk: the command that continues the runs (for the index)")
    ap.add_argument("--chunks", type=Path, default=REPO / "reference" / "chunks",
                    help="where runs stopped at the deadline are kept, and resumed from")
    args = ap.parse_args(argv)
    if args.tag is not None and not args.tag.replace("_", "").isalnum():
        ap.error(f"--tag {args.tag!r}: use letters, digits and '_' (it becomes part of a folder name)")
    os.environ["POSEKD_MODE"] = args.mode
    if args.phase == "ship":
        from posekd_lib.runs.reference import ship

        if not args.folders:
            ap.error("ship: name the run folders")
        for f in ship(args.folders, args.dest, card={"note": "shipped by hand (scripts/train_reference.py ship)"}):
            print(f"shipped {f}")
        return 0
    if args.phase == "chunk":
        from posekd_lib.runs.reference import save_chunk

        if not args.folders:
            ap.error("chunk: name the unfinished run folders")
        for f in args.folders:
            print(f"saved {save_chunk(f, args.chunks, args.command)}")
        return 0
    phase = PHASES[args.phase]
    unknown = sorted(set(args.configs or ()) - set(phase))
    if unknown:
        ap.error(f"--configs: {', '.join(unknown)} not in the {args.phase} phase ({', '.join(phase)})")
    codes = run_jobs([c for c in phase if c in (args.configs or phase)], args)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
