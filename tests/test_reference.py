"""Reference runs: pack a trained run folder, install it, read its table row and its student back."""
import io
import tarfile

import pytest
import torch

from posekd_lib.runs import runconfig as rc
from posekd_lib.config import REPO_ROOT, run_paths
from posekd_lib.runs.reference import install, load_reference_student, pack_runs, reference_curve, reference_table
from posekd_lib.run import prepare, run_config


def test_pack_install_table_and_load(tmp_path):
    cfg = prepare(REPO_ROOT / "configs" / "baseline_squeezenet.yaml", ["optim.steps=2", "name=ref_baseline"], "quick")
    row = run_config(cfg, progress=False)
    run = rc.train_run(cfg, progress=False)          # the finished run, loaded
    tar = tmp_path / "runs.tar.gz"
    assert pack_runs(run_paths("quick").checkpoints, tar) == ["ref_baseline_squeezenet_s0"]
    (folder,) = install(tar, tmp_path / "reference")
    table = reference_table(tmp_path / "reference")
    assert table.loc[0, "run"] == folder.name and table.loc[0, "steps"] == 2
    assert table.loc[0, "AP"] == pytest.approx(row["AP"]) and table.loc[0, "config"] == "ref_baseline"
    student = load_reference_student(folder.name, tmp_path / "reference")
    x = torch.randn(2, 3, 128, 96)
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(x), run.model(x), rtol=0.02, atol=0.02)  # float16 weights


def test_install_refuses_paths_outside_the_folder(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "x").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "x", arcname="../escape.txt")
    with pytest.raises(ValueError, match="escape.txt"):
        install(bad, tmp_path / "reference")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "reference").exists()


def test_unknown_run_names_the_installed_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reference run 'nope'"):
        load_reference_student("nope", tmp_path)


def test_ship_a_max78000_run_and_load_its_float_qat_and_exact_integer_model(tmp_path):
    from posekd_lib.models.ai8x_models import simulate_copy
    from posekd_lib.runs.reference import load_reference_ai8x, ship

    cfg = prepare(REPO_ROOT / "configs" / "ai8x_tiny_gt.yaml", ["name=ref_ai8x_gt"], "quick")
    row = run_config(cfg, progress=False)
    run = rc.train_run(cfg, progress=False)
    base = run_paths("quick").checkpoints / "ref_ai8x_gt_s0"
    with pytest.raises(FileNotFoundError, match="no latest.pt"):
        ship([tmp_path / "ref_missing_s0_qat"], tmp_path / "reference")
    shipped = ship([f"{base}_float", f"{base}_qat"], tmp_path / "reference", card={"command": "test"})
    assert [f.name for f in shipped] == ["ref_ai8x_gt_s0_float", "ref_ai8x_gt_s0_qat"]
    card = __import__("json").loads((shipped[1] / "card.json").read_text())
    assert card["command"] == "test" and card["cores"] >= 1 and card["cpu"]
    table = reference_table(tmp_path / "reference")
    assert list(table["run"]) == ["ref_ai8x_gt_s0_qat"]            # one row per run: its QAT folder
    assert table.loc[0, "int8.AP"] == pytest.approx(row["int8.AP"])
    nets = load_reference_ai8x("ref_ai8x_gt_s0_qat", tmp_path / "reference")
    x = torch.randn(2, 3, 128, 96).clamp(-1, 127 / 128)
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(simulate_copy(nets["qat"])(x), simulate_copy(run.model)(x))   # float32: exact
        torch.testing.assert_close(nets["float"](x), run.float_model(x), rtol=0.02, atol=0.02)  # float16
    with pytest.raises(ValueError, match="load_reference_ai8x"):
        load_reference_student("ref_ai8x_gt_s0_qat", tmp_path / "reference")


def test_train_reference_passes_extra_settings_to_every_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reference", REPO_ROOT / "scripts" / "train_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.argparse.Namespace(seed=1, eval_every=500, float_steps=10, qat_steps=2, steps=7, mode="quick",
                                     set=["model.options.input_size=[144, 112]"], tag=None)
    cmd = script.student_cmd("bottomup_s4_gt", args)
    assert cmd[cmd.index("--set") + 1:] == ["name=ref_bottomup_s4_gt", "seed=1", "optim.eval_every=500",
                                            "optim.steps=10", "qat.steps=2", "model.options.input_size=[144, 112]"]
    assert script.student_cmd("baseline_squeezenet", script.argparse.Namespace(**{**vars(args), "set": None}))[-1] \
        == "optim.steps=7"
    small = script.argparse.Namespace(**{**vars(args), "set": ["model.options.variant=small"], "tag": "small"})
    assert script.student_cmd("ai8x_tiny_fpd", small)[-6] == "name=ref_ai8x_tiny_fpd_small"   # shipped beside tiny's
    assert [f.name for f in script.folders("ai8x_tiny_fpd", small)] == ["ref_ai8x_tiny_fpd_small_s1_float",
                                                                       "ref_ai8x_tiny_fpd_small_s1_qat"]


@pytest.mark.slow  # two 4+2-step MAX78000 runs side by side in quick mode: ~40 s
def test_train_reference_script_trains_then_ships_both_max78000_runs(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "POSEKD_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train_reference.py"), "ai8x", "--mode", "quick",
           "--float-steps", "4", "--qat-steps", "2", "--eval-every", "2", "--dest", str(tmp_path / "reference"),
           "--chunks", str(tmp_path / "chunks")]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = reference_table(tmp_path / "reference").set_index("run")
    assert set(table.index) == {"ref_ai8x_tiny_gt_s0_qat", "ref_ai8x_tiny_fpd_s0_qat"}
    assert all(0 <= table[k].min() <= 1 for k in ("float.AP", "qat.AP", "int8.AP"))
    gt, fpd = (json.loads((tmp_path / "reference" / f"ref_ai8x_tiny_{k}_s0_qat" / "card.json").read_text())
               for k in ("gt", "fpd"))
    assert gt["teacher"] is None and len(fpd["teacher"]) == 12 and "optim.steps=4" in fpd["command"]
    curve = reference_curve("ref_ai8x_tiny_gt_s0_qat", tmp_path / "reference")
    assert list(curve["phase"]) == ["float", "float", "qat"] and list(curve["step"]) == [2, 4, 6]
    assert curve["AP"].between(0, 1).all()


def test_tensors_out_of_float16_range_are_shipped_float32(tmp_path):
    """A long SqueezeNet run's BatchNorm running variances pass float16's 65,504 (4e11 after 24,000
    steps): cast to float16 they become inf and the shipped student outputs NaN. Such tensors stay
    float32; the others are halved."""
    from posekd_lib.runs.reference import _run_members

    run = tmp_path / "ref_big_squeezenet_s0"
    run.mkdir()
    state = {"conv.weight": torch.randn(4, 3), "bn.running_var": torch.tensor([1.0, 4.3e11]),
             "bn.num_batches_tracked": torch.tensor(7)}
    torch.save({"model": state}, run / "latest.pt")
    members = dict(_run_members(run))
    shipped = torch.load(io.BytesIO(members["model_fp16.pt"]), weights_only=True)
    assert shipped["conv.weight"].dtype == torch.float16
    assert shipped["bn.running_var"].dtype == torch.float32 and torch.equal(shipped["bn.running_var"],
                                                                           state["bn.running_var"])
    assert shipped["bn.num_batches_tracked"] == 7


def test_seed_table_keeps_only_complete_pairs_and_names_the_missing_runs(tmp_path):
    from posekd_lib.runs.reference import seed_table

    cfg = prepare(REPO_ROOT / "configs" / "baseline_squeezenet.yaml", ["optim.steps=2", "name=ref_pair_a"], "quick")
    row = run_config(cfg, progress=False)
    for seed in (0, 1):      # a second run of seed 0 under another name, and seed 1 of the first alone
        cfg = prepare(REPO_ROOT / "configs" / "baseline_squeezenet.yaml",
                      ["optim.steps=2", f"name=ref_pair_{'b' if seed == 0 else 'a'}", f"seed={seed}"], "quick")
        run_config(cfg, progress=False)
    tar = tmp_path / "runs.tar.gz"
    pack_runs(run_paths("quick").checkpoints, tar, prefix="ref_pair_")
    install(tar, tmp_path / "reference")
    table, missing = seed_table({"a": "ref_pair_a_squeezenet_s{seed}", "b": "ref_pair_b_squeezenet_s{seed}"},
                                seeds=(0, 1), dest=tmp_path / "reference")
    assert list(table.index) == [0] and list(table.columns) == ["a", "b"]
    assert table.loc[0, "a"] == pytest.approx(row["AP"])
    assert missing == ["ref_pair_b_squeezenet_s1"]
    empty, missing = seed_table({"a": "ref_pair_a_squeezenet_s{seed}"}, seeds=(5,), dest=tmp_path / "nothing")
    assert empty.empty and missing == ["ref_pair_a_squeezenet_s5"]


def test_an_unfinished_run_is_saved_as_a_chunk_restored_and_dropped(tmp_path):
    """save_chunk keeps what an exact resume needs and lists it in the chunks' README table;
    restore_chunk puts it back only where the folder is behind, and the shipped card will name it;
    drop_chunk empties the table again."""
    import json

    from posekd_lib.runs.reference import chunk_facts, chunk_index, drop_chunk, restore_chunk, save_chunk

    run = tmp_path / "runs" / "ref_x_squeezenet_s2"
    run.mkdir(parents=True)
    (run / "latest.pt").write_bytes(b"state")
    (run / "history.json").write_text(json.dumps({"step": [100, 200]}))
    (run / "run_info.json").write_text(json.dumps({"train_time_s": 600.0}))
    (run / "config.yaml").write_text("name: ref_x\n")
    (run / "best.pt").write_bytes(b"not needed")
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    (chunks / "README.md").write_text("# chunks\n\n| run folder | step | training time | command |\n"
                                      "| --- | ---: | ---: | --- |\n| (none at present) | | | |\n\ntext after\n")
    folder = save_chunk(run, chunks, command="python scripts/train_reference.py squeezenet --seed 2")
    assert sorted(p.name for p in folder.iterdir()) == ["chunk.json", "config.yaml", "history.json", "latest.pt",
                                                       "run_info.json"]
    readme = (chunks / "README.md").read_text()
    assert "| `ref_x_squeezenet_s2` | 200 | 10 min | `python scripts/train_reference.py squeezenet --seed 2` |" in readme
    assert "(none at present)" not in readme and readme.endswith("text after\n")
    fresh = tmp_path / "clone" / "ref_x_squeezenet_s2"
    assert restore_chunk(fresh, chunks) and (fresh / "latest.pt").read_bytes() == b"state"
    assert not restore_chunk(fresh, chunks)                  # already as far: nothing copied
    resumed = chunk_facts(fresh)["resumed_from_chunks"]     # what ship() writes into the card
    assert len(resumed) == 1 and resumed[0]["step"] == 200 and resumed[0]["train_time_s"] == 600.0
    assert resumed[0]["saved_utc"] and chunk_facts(run) == {}  # a run trained in one go: no entry
    assert not restore_chunk(tmp_path / "clone" / "other_s0", chunks)
    with pytest.raises(FileNotFoundError, match="no latest.pt"):
        save_chunk(tmp_path / "clone" / "other_s0", chunks)
    assert drop_chunk("ref_x_squeezenet_s2", chunks) and not drop_chunk("ref_x_squeezenet_s2", chunks)
    assert "(none at present)" in (chunks / "README.md").read_text() and "ref_x" not in chunk_index(chunks)
