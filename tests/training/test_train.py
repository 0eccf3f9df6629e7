"""`pairmine train` end to end on Ray Train (subprocesses with timeouts): S3, two workers, resume, faults, erase."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from helpers import PAIRMINE
from helpers import cli as pairmine
from helpers import cli_in_process
from training_inputs import train_config

from pairmine import dataset, storage
from pairmine.training.data import is_validation
from pairmine.training.metrics import read_step_metrics
from pairmine.pipelines.runtime import embedded_cpus
from pairmine.training.run import TrainingError, _check_resources
from pairmine.pipelines.config import load_config
from pairmine.training.config import TrainParams

slow = pytest.mark.slow


def upload(folder: Path, uri: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            storage.write_bytes(storage.join(uri, str(path.relative_to(folder))), path.read_bytes())


def summary_of(run: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(run, "summary.json")))


def checkpoints(run: str) -> list[str]:
    return sorted(storage.basename(e.path) for e in storage.list_dir(run) if e.type == pafs.FileType.Directory and storage.basename(e.path).startswith("checkpoint_"))


def assert_erases_only_inside_the_mask(checkpoint: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    mask = np.zeros((90, 120), np.uint8)
    mask[30:60, 40:90] = 255
    cv2.imwrite(str(tmp_path / "image.png"), image)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    done = cli_in_process("erase", "--checkpoint", checkpoint, "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
                          "--out", str(tmp_path / "erased.png"), "--steps", "3")
    assert done.returncode == 0 and "1 erased" in done.stdout, done.stderr
    erased = cv2.imread(str(tmp_path / "erased.png"))
    assert erased.shape == image.shape and np.array_equal(erased[mask == 0], image[mask == 0]), "a pixel outside the mask changed"
    assert not np.array_equal(erased[mask > 0], image[mask > 0])


@slow
def test_a_killed_two_worker_run_on_s3_resumes_from_its_checkpoint(s3_bucket, training_outputs, smarteraser_parts, tmp_path):
    """Two workers stream shards from S3 into a run folder on S3. The job is killed after its first checkpoint,
    as if before Ray's controller recorded it (only progress.json knows it), and a rerun resumes from there."""
    for name, path in training_outputs.items():
        upload(path, f"s3://{s3_bucket}/{name}")
    config = train_config(tmp_path, smarteraser_parts, [(f"s3://{s3_bucket}/syn", 0.8), (f"s3://{s3_bucket}/video", 0.2)],
                          storage=f"s3://{s3_bucket}/runs", max_steps=40, scaling__num_workers=2, scaling__cpus_per_worker=0.5)
    run = f"s3://{s3_bucket}/runs/run"
    first_out = tmp_path / "first.out"
    with first_out.open("wb") as sink:
        first = subprocess.Popen([PAIRMINE, "train", "--config", str(config), "--no-progress"], start_new_session=True,
                                 stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not storage.exists(storage.join(run, "progress.json")):
        assert first.poll() is None, "the first run ended before its first checkpoint:\n" + first_out.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    killed_at = json.loads(storage.read_bytes(storage.join(run, "progress.json")))
    assert 10 <= killed_at["step"] < 40 and not storage.exists(storage.join(run, "summary.json"))
    assert storage.exists(storage.join(run, killed_at["checkpoint"], "state.pt")), "progress.json names an uploaded checkpoint"
    storage.delete(storage.join(run, "checkpoint_manager_snapshot.json"))

    done = pairmine("train", "--config", str(config), "--no-progress", timeout=600)
    summary = summary_of(run)
    assert summary["steps"] == 40 and summary["workers"] == 2 and summary["resumed_from_step"] >= killed_at["step"] > 0
    assert summary["position"] > killed_at["position"]
    assert "40 steps" in done.stdout and "loss:" in done.stdout
    metrics = read_step_metrics(run)
    assert [m["step"] for m in metrics] == list(range(5, 45, 5)), "every interval's metrics, the resumed run's included"
    losses = [m["loss"] for m in metrics]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], f"the loss did not fall: {losses}"
    found = checkpoints(run)
    assert found == ["checkpoint_00000030", "checkpoint_00000040"], "keep_checkpoints: 2, the resumed-from one included"
    assert summary["checkpoint"] == storage.join(run, "checkpoint_00000040"), "a path erase takes, s3:// included"
    trained_on = json.loads(storage.read_bytes(storage.join(run, "data.json")))["sources"]
    assert [len(s["shards"]) for s in trained_on] == [len(dataset.committed_shards(str(p))) for p in training_outputs.values()]
    latest = storage.join(run, found[-1])
    names = {storage.basename(e.path) for e in storage.list_dir(latest, recursive=True)}
    assert {"eraser.json", "unet.safetensors", "state.pt", "validation.png", "metrics.json"} <= names
    sheet = cv2.imdecode(np.frombuffer(storage.read_bytes(storage.join(latest, "validation.png")), np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape[1] == 4 * sheet.shape[0] // summary["validation"]["val_samples"], "one row per sample: source | mask | prediction | target"
    assert summary["validation"]["val_samples"] > 0 and 0 <= summary["validation"]["val_change_outside"] <= 1
    assert_erases_only_inside_the_mask(run, tmp_path)
    written = storage.read_bytes(storage.join(run, "summary.json"))
    again = pairmine("train", "--config", str(config), "--no-progress", timeout=120)  # finished: its summary stands, nothing runs
    assert "already complete: nothing was run" in again.stdout and "40 steps" in again.stdout, again.stdout + again.stderr
    assert storage.read_bytes(storage.join(run, "summary.json")) == written
    window = len(losses) // 4
    assert summary["metrics"]["first_loss"] == pytest.approx(np.mean(losses[:window]), abs=1e-6), "the whole run's, not the resumed fit's"
    storage.delete(storage.join(run, "summary.json"))  # lost: it was rewritten by a fit of no steps, its losses null
    rebuilt = pairmine("train", "--config", str(config), "--no-progress", timeout=120)
    assert "summary rebuilt" in rebuilt.stdout and "skipped samples: not known" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    again = summary_of(run)
    assert again["rebuilt"] and {k: again[k] for k in ("steps", "position", "metrics", "checkpoint", "validation")} == {
        k: summary[k] for k in ("steps", "position", "metrics", "checkpoint", "validation")}


@slow
def test_ctrl_c_stops_a_training_run_in_one_line_and_keeps_its_checkpoint(training_outputs, smarteraser_parts, tmp_path):
    """Ray Train aborts the run on Ctrl-C and the driver exited 1 with no word on the terminal (a traceback in the log)."""
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 1.0)], max_steps=400)
    run = tmp_path / "runs" / "run"
    with (tmp_path / "out.txt").open("wb") as sink:
        job = subprocess.Popen([PAIRMINE, "train", "--config", str(config), "--no-progress"], start_new_session=True, stdout=sink, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (run / "progress.json").exists():
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint: " + (tmp_path / "out.txt").read_text()[-2000:]
            time.sleep(0.5)
        job.send_signal(signal.SIGINT)
        code, err = job.wait(120), job.stderr.read().decode()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("pairmine: stopped by Ctrl-C; what was committed stays"), err
    assert json.loads((run / "progress.json").read_text())["step"] >= 10 and not (run / "summary.json").exists()


def _corrupt_training_samples(output: Path, val_fraction: float) -> list[str]:
    """In every shard, replace the first training sample's source.jpg by garbage of the same size, and recommit
    the shard's manifest row (every shard: one of them starts the stream, so a corrupt sample is surely read)."""
    keys = []
    for shard in dataset.committed_shards(str(output)):
        data = Path(shard.uri).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".source.jpg") and not is_validation(m.name.split(".")[0], val_fraction))
        keys.append(member.name.split(".")[0])
        data = data[: member.offset_data] + b"\xff" * member.size + data[member.offset_data + member.size :]
        Path(shard.uri).write_bytes(data)
        manifest = output / "manifest" / (Path(shard.uri).stem + ".parquet")
        rows = pa.parquet.read_table(manifest).to_pylist()
        rows[0]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
        manifest.write_bytes(dataset.to_parquet(pa.Table.from_pylist(rows, schema=dataset.MANIFEST_SCHEMA)))
    return keys


def test_a_run_folder_refuses_another_config(training_outputs, smarteraser_parts, tmp_path):
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 1.0)])
    (tmp_path / "runs" / "run").mkdir(parents=True)
    saved = load_config(TrainParams, str(config)).model_dump(mode="json")
    saved["max_steps"] += 10
    saved["optim"]["learning_rate"] *= 2
    (tmp_path / "runs" / "run" / "config.json").write_text(json.dumps({"config_hash": "0" * 64, "config": saved}))
    done = cli_in_process("train", "--config", str(config), "--dry-run")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "holds a run made with config 000000000000" in done.stderr and "--set name=" in done.stderr
    assert "changed: max_steps, optim.learning_rate)" in done.stderr, "which keys differ"


def test_a_resumed_run_reads_the_shards_it_started_on(outputs_copy, smarteraser_parts, tmp_path):
    """Shards committed after a run started would renumber its stream positions (samples trained on twice, others
    never): a resumed run keeps to the shards its data.json lists, and stops when one of them is gone or rewritten.
    An output with no _SUCCESS (still being written, or its run stopped) is trained on with a warning."""
    from pairmine.training.run import _data_record

    output = outputs_copy["syn"]
    config = train_config(tmp_path, smarteraser_parts, [(output, 1.0)])
    params = load_config(TrainParams, str(config))
    shards = dataset.committed_shards(str(output))
    assert len(shards) >= 2
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "data.json").write_bytes(_data_record(params, [(1.0, shards[:-1])]))  # the run started before the last shard
    done = cli_in_process("train", "--config", str(config), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert [s["samples"] for s in json.loads(done.stdout)["sources"]] == [sum(s.samples for s in shards[:-1])]
    assert "1 shard(s) committed since" in done.stderr and "has no _SUCCESS" not in done.stderr
    record = json.loads((run / "data.json").read_text())
    record["sources"][0]["shards"][0]["sha256"] = "0" * 64
    (run / "data.json").write_text(json.dumps(record))
    refused = cli_in_process("train", "--config", str(config), "--dry-run")
    assert refused.returncode == 2 and "which is rewritten since: it cannot resume on the same data" in refused.stderr
    (run / "data.json").unlink()
    (output / "_SUCCESS").unlink()
    warned = cli_in_process("train", "--config", str(config), "--dry-run")
    assert warned.returncode == 0 and "has no _SUCCESS (a pipeline run is writing it, or one was stopped)" in warned.stderr


def test_a_plan_is_shown_without_starting_anything(training_outputs, smarteraser_parts, tmp_path):
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 0.8), (training_outputs["video"], 0.2)])
    plan = json.loads(cli_in_process("train", "--config", str(config), "--dry-run").stdout)
    committed = [sum(dataset.read_manifest(str(training_outputs[k]), ["samples"])["samples"].to_pylist()) for k in ("syn", "video")]
    assert [s["samples"] for s in plan["sources"]] == committed and plan["steps"]["remaining"] == 20
    assert plan["stream"]["stop"] >= 20 * 2 and not (tmp_path / "runs" / "run").exists()


@pytest.mark.parametrize("bad, message", [
    (["data.resolution=60"], "data.resolution: resolution must be a multiple of 8 (the VAE's downsampling) (got 60)"),
    (["scaling.num_workers=0"], "scaling.num_workers: Input should be greater than or equal to 1"),
    (["eraser.base=/nowhere"], "SmartEraser UNet not found: /nowhere/unet"),
])
def test_bad_configs_stop_in_one_line(training_outputs, smarteraser_parts, tmp_path, bad, message):
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 1.0)])
    done = cli_in_process("train", "--config", str(config), "--dry-run", *[a for b in bad for a in ("--set", b)])
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_output_listed_twice_is_a_config_error(training_outputs, smarteraser_parts, tmp_path):
    """Listed twice (once with a trailing slash), its shards were drawn twice an epoch with no word."""
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 1.0), (f"{training_outputs['syn']}/", 0.5)])
    done = cli_in_process("train", "--config", str(config), "--dry-run")
    assert done.returncode == 2 and "is listed twice: give each output once" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_workers_must_leave_cpus_to_the_data_path(smarteraser_parts, tmp_path):
    params = TrainParams.model_validate({"eraser": smarteraser_parts, "data": {"sources": [{"output": "x"}]}, "storage": str(tmp_path),
                                         "scaling": {"num_workers": 2, "cpus_per_worker": 1.0}})
    with pytest.raises(TrainingError, match="reserve 2 of the cluster's 2 CPUs.*at most 0.75"):
        _check_resources(params, 2.0, 0.0)
    _check_resources(params.model_copy(update={"scaling": params.scaling.model_copy(update={"cpus_per_worker": 0.5})}), 2.0, 0.0)
    gpu = params.scaling.model_copy(update={"use_gpu": True})
    with pytest.raises(TrainingError, match="2 GPU workers asked for, the cluster has 0 GPUs"):
        _check_resources(params.model_copy(update={"scaling": gpu}), 2.0, 0.0)
    _check_resources(params.model_copy(update={"scaling": gpu}), 2.0, None)  # GPUs not known yet (a dry run): unchecked


def test_a_dry_run_refuses_workers_that_starve_an_embedded_ray(training_outputs, smarteraser_parts, tmp_path):
    """The refusal came only after Ray had started: --dry-run printed a plan for a run that could not start. The
    embedded Ray's size is the pipelines' ray.num_cpus (train had only ray_address, and ray.* was an unknown key)."""
    config = train_config(tmp_path, smarteraser_parts, [(training_outputs["syn"], 1.0)])
    dry_run = functools.partial(pairmine, "train", "--config", str(config), "--dry-run", timeout=120, check=False)  # this process may hold a Ray
    done = dry_run("--set", "ray.num_cpus=1")
    assert done.returncode == 2 and "reserve 1 of the cluster's 1 CPUs" in done.stderr, done.stderr
    assert dry_run("--set", "ray.num_cpus=2", "--set", "scaling.cpus_per_worker=0.5").returncode == 0
    done = dry_run("--set", f"scaling.num_workers={embedded_cpus(None)}", "--set", "scaling.use_gpu=true")
    assert done.returncode == 0, "GPUs are Ray's to count: " + done.stderr


@slow
@pytest.mark.parametrize("eraser", ["eradiff", "omnieraser"])
def test_the_other_erasers_skip_bad_data_survive_a_failed_worker_and_erase(eraser, request, outputs_copy, tmp_path):
    """EraDiff and OmniEraser on SmartEraser's trainer: a corrupt sample in every Syn4Removal shard and a truncated
    Video4Removal shard are skipped and counted; a worker failure at step 15 restarts the worker group from the
    step-10 checkpoint (each eraser's resume), and the run ends with the losses and weights of the same run
    without the failure (the resume is exact); the trained eraser changes only the masked pixels."""
    import pyarrow.parquet  # noqa: F401  (pa.parquet)

    _corrupt_training_samples(outputs_copy["syn"], 0.1)
    video = dataset.committed_shards(str(outputs_copy["video"]))[0]
    Path(video.uri).write_bytes(Path(video.uri).read_bytes()[:5000])  # truncated: its size no longer matches the manifest
    parts = request.getfixturevalue(f"{eraser}_parts")
    config = train_config(tmp_path, parts, [(outputs_copy["syn"], 0.8), (outputs_copy["video"], 0.2)], eraser=eraser,
                          scaling__max_failures=1)
    done = pairmine("train", "--config", str(config), "--no-progress", timeout=600, env={"PAIRMINE_TRAIN_FAIL_AT_STEP": "15"})
    run = str(tmp_path / "runs" / "run")
    summary = summary_of(run)
    assert summary["eraser"] == eraser and summary["steps"] == 20, "the run completed despite the failure"
    assert summary["resumed_from_step"] == 10, "the restarted worker group went on from the step-10 checkpoint"
    assert storage.read_bytes(storage.join(run, ".injected-failure")) == b"15"
    assert "injected failure at step 15" in done.stdout + done.stderr
    skipped = summary["skipped"]
    assert skipped.get("corrupt_sample", 0) >= 1 and skipped.get("unreadable_shard", 0) >= 2 and "valid" not in skipped, skipped
    assert 0 < summary["samples"] <= 20 * 2, "the rows trained on: at most batch 2 a step"
    assert "corrupt_sample" in done.stdout and "unreadable_shard" in done.stdout
    losses = [m["loss"] for m in read_step_metrics(run)]
    assert len(losses) == 4 and all(np.isfinite(losses))
    latest = storage.join(run, checkpoints(run)[-1], "eraser")
    saved = {storage.basename(e.path) for e in storage.list_dir(latest)}
    assert saved == ({"eraser.json", "lora.safetensors"} if eraser == "omnieraser" else {"eraser.json", "unet.safetensors"})
    assert_erases_only_inside_the_mask(run, tmp_path)

    (tmp_path / "uninterrupted").mkdir()
    twin = train_config(tmp_path / "uninterrupted", parts, [(outputs_copy["syn"], 0.8), (outputs_copy["video"], 0.2)], eraser=eraser)
    pairmine("train", "--config", str(twin), "--no-progress", timeout=600)
    reference = str(tmp_path / "uninterrupted" / "runs" / "run")
    assert summary_of(reference)["skipped"] == skipped and summary_of(reference)["samples"] == summary["samples"]
    assert [m["loss"] for m in read_step_metrics(reference)] == losses, "the resumed run's losses differ from the uninterrupted run's"
    for name in saved - {"eraser.json"}:
        assert storage.read_bytes(storage.join(latest, name)) == storage.read_bytes(storage.join(reference, checkpoints(reference)[-1], "eraser", name)), \
            f"the resumed run's {name} differs from the uninterrupted run's"


def test_evaluate_compares_erasers_on_the_same_held_out_samples(training_outputs, smarteraser_parts, eradiff_parts, omnieraser_parts, tmp_path):
    import torch

    from pairmine.training import models
    from pairmine.training.erasers import EraDiffParams, OmniEraserParams, SmartEraserParams

    made = {"smarteraser": SmartEraserParams(**smarteraser_parts, inference_steps=2), "eradiff": EraDiffParams(**eradiff_parts, inference_steps=2),
            "omnieraser": OmniEraserParams(**omnieraser_parts, inference_steps=2, lora_rank=4, lora_alpha=4)}
    for name, params in made.items():
        models.build(params, torch.device("cpu")).save(str(tmp_path / name), {"resolution": 64, "step": 7, "val_fraction": 0.1})
    sheet = tmp_path / "compare.png"
    args = ["evaluate", "--data", str(training_outputs["syn"]), "--data", str(training_outputs["video"]), "--samples", "3", "--sheet", str(sheet)]
    checkpoint_args = [a for name in made for a in ("--checkpoint", str(tmp_path / name))]
    done = cli_in_process(*args, *checkpoint_args, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["samples"] == 3 and result["resolution"] == 64 and result["val_fraction"] == 0.1
    assert [row["eraser"] for row in result["table"]] == list(made) and all(row["step"] == 7 for row in result["table"])
    for row in result["table"]:
        assert 0 < row["psnr_mask"] < 100 and 0 <= row["change_outside"] <= 1 and row["seconds_per_image"] > 0
    image = cv2.imread(str(sheet))
    assert image.shape[0] == 3 * 256 and image.shape[1] == (3 + 3) * 256, "a row per sample: source | mask | target | three predictions"
    table = cli_in_process(*args, *checkpoint_args).stdout
    assert "PSNR mask" in table and table.count("\n") >= 5
    assert "some of the samples it is scored on are samples it trained on" not in done.stderr
    wider = cli_in_process(*args, "--checkpoint", str(tmp_path / "smarteraser"), "--val-fraction", "0.3", "--samples", "1")
    assert wider.returncode == 0 and "held out val_fraction 0.1 in training, less than the 0.3 evaluated" in wider.stderr
    # a mistyped --data was left out without a word (the table scored other samples); a --sheet that cannot be written failed last
    for bad, said in ((["--data", str(tmp_path / "typo")], "typo: not a pipeline output"),
                      (["--sheet", str(tmp_path)], "is a folder: give the sheet's file name"),
                      (["--sheet", str(tmp_path / "x.jpg")], "the sheet is a PNG; name it .png")):
        refused = cli_in_process(*args, *bad, "--checkpoint", str(tmp_path / "smarteraser"))
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr


def test_the_new_layers_start_from_the_runs_seed(smarteraser_parts, tmp_path):
    import torch

    from pairmine.training.loop import build_eraser

    params = TrainParams.model_validate({"eraser": smarteraser_parts, "data": {"sources": [{"output": "x"}]}, "storage": str(tmp_path)})
    weights = [build_eraser(params.model_copy(update={"seed": seed}), torch.device("cpu")).token_mlp.fc.weight for seed in (0, 0, 1)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_a_rerun_starts_from_the_later_of_rays_and_the_committed_checkpoint(tmp_path):
    import ray.train

    from pairmine.training.loop import _start_checkpoint
    from pairmine.training.metrics import checkpoint_name

    run = str(tmp_path)
    assert _start_checkpoint(None, run) is None, "a new run"
    (tmp_path / "progress.json").write_text(json.dumps({"step": 20, "position": 400, "checkpoint": checkpoint_name(20)}))
    committed = str(tmp_path / checkpoint_name(20))
    assert _start_checkpoint(None, run).path == committed, "Ray recorded nothing: the committed one"
    assert _start_checkpoint(ray.train.Checkpoint(str(tmp_path / checkpoint_name(10))), run).path == committed
    assert _start_checkpoint(ray.train.Checkpoint(str(tmp_path / "checkpoint_2026-12-01_10-00-00.000000")), run).path == committed, \
        "a name of Ray's own form (an older run's) has no step: the committed one is later"
    later = ray.train.Checkpoint(str(tmp_path / checkpoint_name(100)))
    assert _start_checkpoint(later, run) is later, "a restarted worker group's own later checkpoint wins"


def test_a_committed_checkpoint_on_s3_is_read_through_the_s3_filesystem(s3_bucket):
    from pairmine.training.loop import _start_checkpoint
    from pairmine.training.metrics import checkpoint_name

    run = f"s3://{s3_bucket}/runs/run"
    storage.write_bytes(f"{run}/{checkpoint_name(20)}/state.pt", b"state")
    storage.write_bytes(f"{run}/progress.json", json.dumps({"step": 20, "position": 0, "checkpoint": checkpoint_name(20)}).encode())
    with _start_checkpoint(None, run).as_directory() as folder:
        assert Path(folder, "state.pt").read_bytes() == b"state"


def test_erase_takes_a_run_folders_committed_checkpoint_or_else_its_latest(tmp_path):
    from pairmine.training.erase import latest_checkpoint

    for name in ("checkpoint_2026-12-01_10-00-00.000000", "checkpoint_2026-12-01_11-00-00.000000"):
        (tmp_path / name).mkdir()
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_2026-12-01_11-00-00.000000"), "a run from before the commit"
    (tmp_path / "checkpoint_00000030").mkdir()
    (tmp_path / "checkpoint_00000040").mkdir()  # uploaded, never committed (a kill during the upload)
    (tmp_path / "progress.json").write_text(json.dumps({"step": 30, "position": 0, "checkpoint": "checkpoint_00000030"}))
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_00000030")
    # keep_checkpoints 1: Ray deleted the committed one once the newer upload registered, before its commit
    (tmp_path / "checkpoint_00000030").rmdir()
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_00000040")


@slow
def test_a_run_whose_data_runs_out_of_valid_samples_fails_and_keeps_its_steps(outputs_copy, smarteraser_parts, tmp_path):
    """Every shard of one of two equal sources damaged: the stream ran out before max_steps and the run ended with
    exit 0 and a summary (with 0 steps when all were damaged), as if finished. It now checkpoints the steps it made
    and exits 1 saying why; no summary marks it finished."""
    for shard in dataset.committed_shards(str(outputs_copy["syn"])):
        Path(shard.uri).write_bytes(Path(shard.uri).read_bytes()[:5000])
    config = train_config(tmp_path, smarteraser_parts, [(outputs_copy["syn"], 0.5), (outputs_copy["video"], 0.5)], checkpoint_every=100)
    done = pairmine("train", "--config", str(config), "--no-progress", timeout=600, check=False)
    run = str(tmp_path / "runs" / "run")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the data ran out of valid samples (skipped: unreadable_shard" in done.stderr and "of 20" in done.stderr
    assert not storage.exists(storage.join(run, "summary.json"))
    (kept,) = checkpoints(run)  # checkpoint_every=100: only the one written when the data ran out
    assert 0 < int(kept.rsplit("_", 1)[1]) < 20


@slow
def test_a_failed_run_and_a_damaged_checkpoint_are_one_line_errors(outputs_copy, smarteraser_parts, tmp_path):
    """A run whose workers fail past max_failures ended in a traceback around its own message; resuming from a
    checkpoint whose state.pt was damaged failed in pickle's words, naming no file. The error says to remove the
    damaged checkpoint, and the rerun then resumes from the one before it (progress.json still named the removed
    one, and Ray's snapshot listed it: the run could not go on at all). Every path of its config is relative: Ray Train's
    workers run in another folder, where relative eraser parts were not found and a relative storage lost
    progress.json and the metrics to Ray's session folder."""
    relative = {name: os.path.relpath(path, tmp_path) for name, path in smarteraser_parts.items() if name in ("base", "clip")}
    config = train_config(tmp_path, smarteraser_parts | relative, [(os.path.relpath(outputs_copy["syn"], tmp_path), 1.0)],
                          scaling__max_failures=0, max_steps=30, storage="runs")
    run_here = functools.partial(pairmine, cwd=tmp_path)
    failed = run_here("train", "--config", str(config), "--no-progress", timeout=600, check=False, env={"PAIRMINE_TRAIN_FAIL_AT_STEP": "25"})
    assert failed.returncode == 1 and "training failed on worker 0 after 0 restarts: " in failed.stderr, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    run = tmp_path / "runs" / "run"
    assert checkpoints(str(run)) == ["checkpoint_00000010", "checkpoint_00000020"]
    (run / "checkpoint_00000020" / "state.pt").write_bytes(b"not a torch file")
    resumed = run_here("train", "--config", str(config), "--no-progress", timeout=600, check=False)
    assert resumed.returncode == 1 and "checkpoint_00000020/state.pt does not load (damaged?)" in resumed.stderr, resumed.stderr[-3000:]
    assert "remove the folder checkpoint_00000020 and rerun" in resumed.stderr
    shutil.rmtree(run / "checkpoint_00000020")
    again = run_here("train", "--config", str(config), "--no-progress", timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint checkpoint_00000020 is gone: the run resumes from checkpoint_00000010" in again.stderr
    summary = summary_of(str(run))
    assert summary["steps"] == 30 and summary["resumed_from_step"] == 10 and summary["metrics"]["last_loss"] is not None
    assert [m["step"] for m in read_step_metrics(str(run))] == list(range(5, 35, 5))
    assert checkpoints(str(run)) == ["checkpoint_00000020", "checkpoint_00000030"]


def test_pruning_keeps_the_latest_checkpoints_and_those_rays_snapshot_lists(tmp_path):
    """A resumed run's start checkpoint (an earlier fit's) was never pruned; pruning must not delete one that Ray's
    snapshot lists either (Ray then refuses to restore the run: "corrupted run directory")."""
    from pairmine.training.run import RAY_SNAPSHOT, _prune_checkpoints

    for step in (10, 20, 30, 40):
        (tmp_path / f"checkpoint_{step:08d}").mkdir()
        (tmp_path / f"checkpoint_{step:08d}" / "state.pt").write_bytes(b"x")
    _prune_checkpoints(str(tmp_path), 3)
    assert checkpoints(str(tmp_path)) == ["checkpoint_00000020", "checkpoint_00000030", "checkpoint_00000040"]
    (tmp_path / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000020"},
                                                                            {"checkpoint_dir_name": "checkpoint_00000040"}]}))
    _prune_checkpoints(str(tmp_path), 1)
    assert checkpoints(str(tmp_path)) == ["checkpoint_00000020", "checkpoint_00000040"]


def _checkpoint_folder(run: Path, step: int, position: int) -> None:
    folder = run / f"checkpoint_{step:08d}"
    (folder / "eraser").mkdir(parents=True)
    (folder / "eraser" / "eraser.json").write_text("{}")
    (folder / "state.pt").write_bytes(b"x")
    (folder / "metrics.json").write_text(json.dumps({"step": step, "position": position}))


def test_a_checkpoint_that_is_gone_falls_back_to_the_newest_whole_one(tmp_path):
    """Ray prunes the checkpoint progress.json names once its controller records the next (keep_checkpoints: 1); a
    kill before progress.json names the next left it naming a gone folder, and the fallback must take the newer one
    Ray recorded, not start over. A folder only Ray's snapshot lists, removed as damaged, falls back too."""
    from pairmine.training.run import RAY_SNAPSHOT, _commit_resume_point, _resume_point

    run = tmp_path / "run"
    for step, position in ((10, 25), (20, 50)):
        _checkpoint_folder(run, step, position)
    (run / "progress.json").write_text(json.dumps({"step": 20, "position": 50, "checkpoint": "checkpoint_00000020"}))
    assert _resume_point(str(run)) == {"step": 20, "position": 50, "checkpoint": "checkpoint_00000020"}, "all there: no fallback"
    shutil.rmtree(run / "checkpoint_00000010")
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000020"}]}))
    _checkpoint_folder(run, 30, 75)  # Ray's newer one, recorded; progress.json still names the one Ray pruned
    (run / "progress.json").write_text(json.dumps({"step": 10, "position": 25, "checkpoint": "checkpoint_00000010"}))
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000030"}]}))
    assert _resume_point(str(run)) == {"step": 30, "position": 75, "checkpoint": "checkpoint_00000030", "fallback": True}
    (run / "checkpoint_00000030" / "state.pt").unlink()  # damaged, removed by hand (half): Ray's snapshot still lists it
    (run / "progress.json").write_text(json.dumps({"step": 20, "position": 50, "checkpoint": "checkpoint_00000020"}))
    (run / "metrics").mkdir()
    for name in ("steps-00000005-00000020.jsonl", "steps-00000025-00000030.jsonl", "validation-00000020.json", "validation-00000030.json"):
        (run / "metrics" / name).write_text("{}")
    point = _resume_point(str(run))
    assert point == {"step": 20, "position": 50, "checkpoint": "checkpoint_00000020", "fallback": True}
    _commit_resume_point(str(run), point)
    assert checkpoints(str(run)) == ["checkpoint_00000020"], "the half-removed folder would mix with the rerun's"
    assert sorted(p.name for p in (run / "metrics").iterdir()) == ["steps-00000005-00000020.jsonl", "validation-00000020.json"]
    assert json.loads((run / "progress.json").read_text()) == {"step": 20, "position": 50, "checkpoint": "checkpoint_00000020"}
    assert not (run / RAY_SNAPSHOT).exists()
    shutil.rmtree(run / "checkpoint_00000020")
    assert _resume_point(str(run)) == {"step": 0, "position": 0, "fallback": True}, "none left: the start"


def test_a_config_hashes_its_paths_as_written(training_outputs, smarteraser_parts, tmp_path, monkeypatch):
    """Local paths are made absolute for the workers, but the hash is over the config as written: the same relative
    config run from another folder (a moved checkout, CI) must resume its run, not be refused as another config."""
    hashes = []
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "data").symlink_to(training_outputs["syn"])
        config = train_config(tmp_path / where, smarteraser_parts, [("data", 1.0)], storage="runs")
        monkeypatch.chdir(tmp_path / where)
        plan = json.loads(cli_in_process("train", "--config", str(config), "--dry-run").stdout)
        assert plan["run"] == str(tmp_path / where / "runs" / "run") and plan["sources"][0]["output"] == str(tmp_path / where / "data")
        hashes.append(plan["config_hash"])
    assert hashes[0] == hashes[1]


def test_a_summary_from_an_older_version_prints_no_valid_count():
    from pairmine.training.run import format_summary

    text = format_summary({"eraser": "smarteraser", "run": "r", "steps": 2, "wall_seconds": 1.0, "skipped": {"valid": 8, "corrupt_sample": 1}})
    assert "skipped samples: corrupt_sample 1\n" in text and "valid 8" not in text
