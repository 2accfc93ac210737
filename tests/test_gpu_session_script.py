"""scripts/gpu_session.sh: its stages name real benchmark commands, and bad arguments fail early."""

from __future__ import annotations

import os
import shlex
import subprocess

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_session.sh"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env)


run_cmd = run  # for the tests whose own name for a run folder is `run`


def test_each_stage_runs_a_script_of_the_repository_with_options_it_accepts():
    listed = run("--list")
    assert listed.returncode == 0
    stages = dict(line.split(": ", 1) for line in listed.stdout.splitlines())
    assert list(stages)[0] == "gpu_tests" and {"fit1m", "tss", "eval", "grid48"} <= set(stages)
    for stage, command in stages.items():
        for part in command.split("; "):  # a stage may run several commands in turn
            words = shlex.split(part)
            script = next(w for w in words if w.endswith((".py", ".sh")))
            assert (REPO / script).is_file(), f"{stage}: {script} is not in the repository"
            if script.endswith(".py"):  # every option parses: --help after them would hide a typo, so check them
                own = words[: words.index("--")] if "--" in words else words  # after --: `flare fit`'s
                options = {w.split("=")[0] for w in own if w.startswith("--")}
                text = (REPO / script).read_text()
                missing = [o for o in options if f'"{o}"' not in text]
                assert not missing, f"{stage}: {script} has no option {missing}"


def test_the_accuracy_stage_is_opt_in_and_launches_known_arms():
    """acc starts runs that outlive the stage, so only a named STAGES runs it; its arms are ones
    benchmarks/accuracy.py knows (their options are tested there), in two lanes on GPU 0."""
    from tests.helpers import import_benchmark

    accuracy = import_benchmark("accuracy_runs")
    listed = dict(line.split(": ", 1) for line in run("--list").stdout.splitlines())
    words = shlex.split(listed["acc"])
    arms = words[words.index("--arms") + 1: words.index("--out")]
    assert arms == ["fp16", "32-tf32"] and set(arms) <= set(accuracy.ARMS)
    assert words[words.index("--devices") + 1: words.index("--arms")] == ["0", "0"]
    assert words[words.index("--models") + 1] == "flare" and "--fast-step" in words
    # nothing runs it unless named: the default stages leave it out; named, it runs last (timings run alone)
    default = run("--plan", env={k: v for k, v in os.environ.items() if k != "STAGES"})
    assert default.returncode == 0 and "acc" not in default.stdout.split()
    assert default.stdout.split() == [s for s in listed if s not in ("acc", "ddp1m")]
    named = run("--plan", env={**os.environ, "STAGES": "fit1m acc gpu_tests"})
    assert named.stdout.split() == ["gpu_tests", "fit1m", "acc"]


def test_row_choices_reach_the_scripts_as_words_even_with_shell_characters():
    """MLP_ONLY's regexes (and the other choosers) are quoted into the stage's command: a | is no pipe
    (a bare one ran `dw_` as a command and lost the mlp stage on a lent GPU), a * no glob."""
    env = {**os.environ, "MLP_ONLY": "split_|dw_  dw_*", "FIT1M_ROWS": "ours-fast ours-m128", "ACC_SEEDS": "0 1 2"}
    listed = dict(line.split(": ", 1) for line in run("--list", env=env).stdout.splitlines())
    mlp = shlex.split(listed["mlp"])
    assert mlp[mlp.index("--only") + 1:] == ["split_|dw_", "dw_*"]
    fit1m = shlex.split(listed["fit1m"])
    assert fit1m[fit1m.index("--rows") + 1: fit1m.index("--root")] == ["ours-fast", "ours-m128"]
    acc = shlex.split(listed["acc"])
    assert acc[acc.index("--seeds") + 1: acc.index("--fast-step")] == ["0", "1", "2"]
    eight = dict(line.split(": ", 1) for line in run("--list", env={**env, "ACC_DEVICES": "0 1 2 3 4 5 6 7"}).stdout.splitlines())
    acc = shlex.split(eight["acc"])  # a lent machine of eight GPUs: a worker on each
    assert acc[acc.index("--devices") + 1: acc.index("--arms")] == [str(i) for i in range(8)]


def test_unknown_arguments_and_stages_stop_before_anything_runs():
    bad = run("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
    stage = run(env={**os.environ, "STAGES": "gpu_tests nope"})
    assert stage.returncode == 2 and "unknown stage 'nope'" in stage.stderr


def test_pack_brings_records_and_accuracy_runs_back_in_few_files_and_unpack_restores_them(tmp_path):
    """A call returns at most 8 files two folders deep: --pack writes $DEV as one archive and the
    accuracy run folders (checkpoints, launch record, its log) in archives of up to PACK_MIB each
    (here one MiB: a run each); --unpack puts them back."""
    dev, acc, out = tmp_path / "dev", tmp_path / "acc", tmp_path / "out"
    (dev / "rec_fit1m").mkdir(parents=True)
    (dev / "rec_fit1m" / "r.json").write_text("{}")
    (dev / "progress").write_text("12:00 start fit1m\n")
    runs = []
    for arm in ("32-tf32", "bf16-fp32mixer-tf32"):
        run = acc / arm / "flare_elasticity" / "seed0_full"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(arm.encode() * 1000 + bytes(700_000))
        (run / "checkpoints" / ".last.ckpt.x1.tmp").write_bytes(b"half")  # a save in progress stays behind
        (run / "launch.json").write_text('{"attempts": []}')
        (acc / arm / "logs").mkdir()
        (acc / arm / "logs" / "flare_elasticity_seed0_full.log").write_text(f"{arm} log\n")
        runs.append(run)
    env = {**os.environ, "DEV": str(dev), "ACC_ROOT": str(acc)}
    assert run_cmd("--pack", str(tmp_path / "together"), env=env).returncode == 0  # both runs fit 15 MiB
    assert sorted(p.name for p in (tmp_path / "together").iterdir()) == ["acc_1.tar", "dev.tar.gz"]
    assert run_cmd("--pack", str(out), env={**env, "PACK_MIB": "1"}).returncode == 0  # 0.7 MB each: two archives
    assert sorted(p.name for p in out.iterdir()) == ["acc_1.tar", "acc_2.tar", "dev.tar.gz"]
    back, fetched = tmp_path / "back", tmp_path / "fetched"
    out.chmod(0o555)  # the fetched files lie read-only
    unpacked = run_cmd("--unpack", str(out), str(fetched), env={**env, "ACC_ROOT": str(back)})
    out.chmod(0o755)
    assert unpacked.returncode == 0, unpacked.stderr
    assert (fetched / "dev" / "rec_fit1m" / "r.json").read_text() == "{}" and (fetched / "dev" / "progress").is_file()
    for arm, run in zip(("32-tf32", "bf16-fp32mixer-tf32"), runs):
        here = back / run.relative_to(acc)
        assert (here / "checkpoints" / "last.ckpt").read_bytes() == arm.encode() * 1000 + bytes(700_000)
        assert (here / "launch.json").is_file() and not (here / "checkpoints" / ".last.ckpt.x1.tmp").exists()
        assert (back / arm / "logs" / "flare_elasticity_seed0_full.log").read_text() == f"{arm} log\n"
    together = run_cmd("--unpack", str(tmp_path / "together"), str(tmp_path / "f2"), env={**env, "ACC_ROOT": str(tmp_path / "b2")})
    assert together.returncode == 0 and all((tmp_path / "b2" / r.relative_to(acc) / "launch.json").is_file() for r in runs)


def test_snapshot_copies_the_tree_the_stages_run_from(tmp_path):
    """Stages run from a copy of the tree (a later call's copy onto the GPU machine rewrites the
    tree's files while they run): the scripts and package are there, .git and run outputs are not."""
    dest = tmp_path / "tree"
    done = run("--snapshot", str(dest))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(dest)
    for path in ("scripts/gpu_session.sh", "flare_lightning/kernels/triton_mixer.py", "benchmarks/train_step_small.py",
                 "configs/drivaerml_1m.yaml"):
        assert (dest / path).read_bytes() == (REPO / path).read_bytes()
    assert not (dest / ".git").exists() and not (dest / "runs").exists()
    assert run("--snapshot").returncode != 0  # the folder is required
