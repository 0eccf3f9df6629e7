"""The ``pairmine`` command as users run it: help, one-line errors before any work, kill and resume."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import read_parquet_dir, read_samples, shard_paths
from sample_inputs import TESTDATA, write_loose_sa1b

from pairmine.pipelines.cli import COMMAND_MODULES, build_parser, commands
from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL

PAIRMINE = [sys.executable, "-m", "pairmine.pipelines.cli"]
SA1B_TAR = str(TESTDATA / "sa1b" / "sa_000000.tar")


def pairmine(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRMINE, *args], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("args", [["--help"], ["syn4removal", "--help"], ["video4removal", "--help"]])
def test_help_says_what_it_does_with_examples(args):
    result = pairmine(*args)
    assert result.returncode == 0
    assert args[0].strip("-") in result.stdout or ("syn4removal" in result.stdout and "video4removal" in result.stdout)
    if len(args) == 2:
        assert "examples:" in result.stdout and "--input" in result.stdout and "s3://" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["syn4removal", "--input", SA1B_TAR, "--output", ""], "argument --output: an empty path"),  # it was the current folder, or /
    (["video4removal", "--input", "caf\udce9.mp4", "--output", "out", "--dry-run"],  # bytes caf\xe9: Arrow raised UnicodeEncodeError
     "argument --input: caf\\xe9.mp4: the name is not valid UTF-8"),
    (["syn4removal", "--input", SA1B_TAR, "--output", "out", "--wait", "nan"], "argument --wait: must be a finite number of at least 0, not nan"),
    (["report", "out", "--shards", "0"], "argument --shards: must be at least 1, not 0"),
    (["report", str(TESTDATA), "--out", str(TESTDATA)], f"--out {TESTDATA} is a folder: give the page's file name"),
    (["erase", "--checkpoint", "c", "--image", "nope.png", "--mask", "m.png", "--out", "x.png"], "--image nope.png not found"),
    (["erase", "--checkpoint", "c", "--image", "i.png", "--mask", "m.png", "--out", "x.png", "--steps", "0"], "argument --steps: must be at least 1, not 0"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--val-fraction", "2"], "argument --val-fraction: must be in (0, 1], not 2"),
    (["syn4removal", "--input", SA1B_TAR, "--output", "out", "--set", "ray.address=foo"], "cannot join the Ray cluster at 'foo'"),
    (["syn4removal", "--input", SA1B_TAR, "--output", "out", "--set", "ray.address=127.0.0.1:1"],  # Ray retries for minutes
     "cannot join the Ray cluster at '127.0.0.1:1': nothing answers on 127.0.0.1:1"),
    (["syn4removal", "--input", SA1B_TAR, "--output", f"{SA1B_TAR}/out", "--dry-run"], f"({SA1B_TAR} is a file, not a folder)"),
    (["syn4removal", "--input", f"foo:{SA1B_TAR}", "--output", "out"], "unknown input kind 'foo'"),
    (["erase", "--checkpoint", "nowhere", "--image", SA1B_TAR, "--mask", SA1B_TAR, "--out", "x.png"], "checkpoint not found: nowhere"),
    (["erase", "--checkpoint", "c", "--image", SA1B_TAR, "--mask", SA1B_TAR, "--out", SA1B_TAR],  # it overwrote the input
     f"--out {SA1B_TAR} is the --image itself: erasing would overwrite the inputs"),
    (["erase", "--checkpoint", "c", "--image", SA1B_TAR, "--mask", str(TESTDATA), "--out", "x.png"],
     f"--image {SA1B_TAR} is a file: --mask must be its mask file, not a folder"),
])
def test_bad_arguments_stop_in_one_line_before_any_work(args, message, tmp_path):
    done = pairmine(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_each_commands_help_ends_with_the_exit_codes_it_returns():
    """Only the pipelines, which hold an output's lease, can answer 3 (output busy); erase says what its 1 means."""
    for command in commands():
        (help_text,) = [sub.format_help() for action in build_parser([command.name])._subparsers._group_actions
                        for name, sub in action.choices.items() if name == command.name]
        assert help_text.rstrip().endswith(command.exit_codes.rstrip()), command.name
        assert ("3 output busy" in help_text) == (command.name in ("syn4removal", "video4removal")), command.name
    assert "1 some could not be" in commands(["erase"])[0].exit_codes


def test_each_command_is_declared_by_the_module_the_registry_names_and_a_command_line_imports_only_it():
    for name, module in COMMAND_MODULES.items():
        assert name in [c.name for c in importlib.import_module(module).COMMANDS], f"{module} does not declare {name}"
    declared = [c.name for module in dict.fromkeys(COMMAND_MODULES.values()) for c in importlib.import_module(module).COMMANDS]
    assert sorted(declared) == sorted(COMMAND_MODULES), "a declared command is missing from the registry"
    code = "import sys; from pairmine.pipelines import cli; cli.build_parser(['verify', 'out']); print('ray.data' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert found.stdout.strip() == "False", "`pairmine verify` imported the pipelines (Ray Data)"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input", "no/such/path"], "input not found"),
        (["--input", SA1B_TAR, "--set", "placement.nope=1"], "unknown key 'placement.nope'"),
        (["--input", SA1B_TAR, "--set", "placement.max_instance_overlap=2"], "placement.max_instance_overlap"),
        (["--input", SA1B_TAR, "--set", "group_size=many"], "group_size"),
        (["--input", SA1B_TAR, "--set", "seed"], "KEY=VALUE"),
        (["--input", SA1B_TAR, "--set", "mask_enhancement.modes=[erode]"], "training time only"),
        (["--input", SA1B_TAR, "--config", "missing.yaml"], "cannot read config missing.yaml"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line(tmp_path, extra, message):
    out = tmp_path / "out"
    result = pairmine("syn4removal", "--output", str(out), *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pairmine: error:") and message in lines[0], result.stderr
    assert not (out / "shards").exists(), "work started despite the error"


@pytest.mark.parametrize("extra, message", [
    (["--input", __file__], "is not a video"),
    (["--input", str(TESTDATA / "sa1b")], "no videos"),
    (["--input", str(TESTDATA / "video"), "--set", "decode.reader=opencv"], "decode.reader"),
])
def test_video_arguments_fail_fast_with_one_line(tmp_path, extra, message):
    result = pairmine("video4removal", "--output", str(tmp_path / "out"), *extra)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_unreachable_bucket_fails_fast(tmp_path, s3_endpoint):
    result = pairmine("syn4removal", "--input", "s3://no-such-bucket/sa1b/", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "no-such-bucket" in result.stderr


def test_an_s3_output_with_an_empty_part_is_its_one_spelling(s3_bucket):
    """Arrow's S3 refuses `x//y` (a traceback, exit 1): the path is normalised as inputs are."""
    plan = pairmine("syn4removal", "--input", SA1B_TAR, "--output", f"s3://{s3_bucket}/x//y/", "--dry-run")
    assert plan.returncode == 0 and '"done": false' in plan.stdout, plan.stderr


def test_print_config_and_dry_run(tmp_path):
    shown = pairmine("syn4removal", "--input", SA1B_TAR, "--output", str(tmp_path / "o"), "--print-config", "--set", "seed=5")
    assert shown.returncode == 0 and "seed: 5" in shown.stdout and "# config_hash: " in shown.stdout
    plan = pairmine("syn4removal", "--input", SA1B_TAR, "--output", str(tmp_path / "o"), "--dry-run")
    assert plan.returncode == 0 and '"name": "sa_000000.tar"' in plan.stdout and '"done": false' in plan.stdout
    assert not (tmp_path / "o" / "shards").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, by", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_stopped_run_says_so_in_one_line_and_gives_its_lease_back(tmp_path, sig, code, by):
    """A scheduler's timeout or an eviction sends SIGTERM: one line and its own exit code, not a traceback and
    exit 15, with the lease given back so that the rerun starts at once."""
    write_loose_sa1b(tmp_path / "loose", 24)
    out = tmp_path / "out"
    job = subprocess.Popen([*PAIRMINE, "syn4removal", "--input", str(tmp_path / "loose"), "--output", str(out), "--set", "group_size=2",
                            "--set", "shards.max_samples=2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not list((out / "manifest").glob("*.parquet")):
        assert job.poll() is None, "the job ended before it could be stopped"
        time.sleep(0.05)
    job.send_signal(sig)
    _, err = job.communicate(timeout=120)
    assert job.returncode == code, err[-3000:]
    assert err.strip().splitlines()[-1] == f"pairmine: stopped by {by}; what was committed stays, and rerunning the same command continues"
    assert "Traceback" not in err and not (out / "_LEASE").exists()
    assert "SIGTERM received" not in err, "abseil's handler (its dump, and its abort 3 s later: exit -6 on a busy machine) is off"


def test_a_sigterm_cancels_the_abort_alarm_abseil_arms():
    """Where abseil's failure handler still sees SIGTERM first, it arms a 3 s alarm whose handler aborts the process."""
    from pairmine.errors import exit_on_sigterm

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.alarm(1)  # as abseil does
        with pytest.raises(SystemExit) as stopped:
            exit_on_sigterm(signal.SIGTERM, None)
        time.sleep(1.3)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert stopped.value.code == signal.SIGTERM and not fired


@pytest.mark.slow
def test_killed_run_leaves_no_partial_shard_and_a_rerun_completes_it(tmp_path, ray_local):
    loose = tmp_path / "loose"
    stems = write_loose_sa1b(loose, 24)
    args = ["--input", str(loose), "--set", "group_size=2", "--set", "shards.max_samples=2", "--set", "ray.num_cpus=2", "--no-progress"]
    out = tmp_path / "killed"
    job = subprocess.Popen([*PAIRMINE, "syn4removal", "--output", str(out), *args], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "manifest").glob("*.parquet"))) < 2:
        assert job.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(2)  # anything still writing would show up now
    listed = {r["shard"]: r for r in read_parquet_dir(str(out / "manifest")) if r["shard"]}
    assert listed, "killed before its first shard"
    for path in shard_paths(str(out)):
        with tarfile.open(path) as tar:  # every visible .tar is a complete archive
            assert tar.getmembers()
        rel = f"shards/{Path(path).name}"
        if rel in listed:
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == listed[rel]["sha256"]

    rerun = pairmine("syn4removal", "--output", str(out), *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    keys = [s["__key__"] for s in read_samples(str(out))]
    assert len(keys) == len(set(keys)), "duplicates after the rerun"
    consumed = [i for r in read_parquet_dir(str(out / "manifest")) for e in r["inputs"] for i in e["ids"]]
    assert sorted(consumed) == sorted(stems), "every input consumed exactly once"

    clean = tmp_path / "clean"
    run(SYN4REMOVAL, [str(loose)], str(clean), overrides=["group_size=2", "shards.max_samples=2"], progress_bars=False)
    assert sorted(keys) == sorted(s["__key__"] for s in read_samples(str(clean)))
    assert len(listed) < len(shard_paths(str(clean))), "the kill came after the last shard: nothing was left to the rerun"


@pytest.mark.parametrize("fmt, verbose", [("text", False), ("json", False), ("json", True)])
def test_a_run_prints_a_few_lines_and_logs_ray_to_its_folder(tmp_path, fmt, verbose):
    """Ray's lines go to the run's log file (and with -v to the terminal), in the run's format from start to end:
    ray.init sets its own formatter on the handlers of its logger, ours included, unless they keep theirs."""
    loose = tmp_path / "loose"
    write_loose_sa1b(loose, 2)
    out = tmp_path / "out"
    done = pairmine("syn4removal", *(["-v"] if verbose else []), "--input", str(loose), "--output", str(out), "--no-progress", "--log-format", fmt)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    if not verbose:
        assert 1 <= len(lines) <= 3, lines  # the start line (and Ray's one-time notices at most), no Ray execution chatter
        assert not any("Starting execution" in line or "progress UI" in line for line in lines)
    (run_log,) = (out / "logs").glob("*.log")
    logged = run_log.read_text().splitlines()
    assert any("Data sink ShardSink finished" in line for line in logged), "Ray's own lines go to the run's log file"
    if fmt == "json":
        start = json.loads(lines[0])  # every line one JSON object
        assert start["level"] == "INFO" and start["logger"] == "pairmine" and start["pipeline"] == "syn4removal"
        for line in lines + logged:
            assert isinstance(json.loads(line), dict), line
        if verbose:
            assert any(json.loads(line)["logger"].startswith("ray.data") for line in lines), "-v shows Ray's lines, as JSON"
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ [\w.]+: ", line) for line in logged), logged
    assert "syn4removal run" in done.stdout and "samples" in done.stdout  # the summary
