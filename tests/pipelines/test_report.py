"""`pairmine report`: the page renders in headless Chromium and shows the output's counts; it reads
local and s3:// outputs, and only the sampled samples' files of a shard."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import boto3
import numpy as np
import pytest
from helpers import cli, cli_in_process
from PIL import Image
from sample_inputs import write_loose_sa1b

from pairmine import dataset
from pairmine.pipelines.report import collect, render
from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 3000)


@pytest.fixture(scope="module")
def output(tmp_path_factory, ray_local) -> Path:
    """Two runs on one output: the first writes several shards, the second has nothing to do."""
    root = tmp_path_factory.mktemp("report")
    write_loose_sa1b(root / "loose", 10)
    for _ in range(2):
        run(SYN4REMOVAL, [str(root / "loose")], str(root / "out"), overrides=["group_size=4", "shards.max_samples=2"], progress_bars=False)
    return root / "out"


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: `make test` installs Debian's chromium (infra/install_chromium.sh); needs root and apt")
def test_the_page_renders_in_chromium_and_shows_the_counts(output, tmp_path):
    page = tmp_path / "report.html"
    printed = cli("report", str(output), "--out", str(page)).stdout
    manifest, rejects = dataset.read_manifest(str(output)), dataset.read_rejects(str(output))
    samples = sum(manifest["samples"].to_pylist())
    assert f"{samples:,} samples" in printed and samples > 0

    shot = tmp_path / "page.png"
    _chromium(f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert (pixels < 235).any(axis=2).mean() > 0.1, "the page is mostly blank"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 2000, "no photographs on the page"

    dom = _chromium("--dump-dom", page.as_uri()).stdout
    count = lambda name: int(re.search(rf'data-count="{name}">([\d,]+)<', dom).group(1).replace(",", ""))  # noqa: E731
    assert count("samples") == samples and count("rejects") == rejects.num_rows
    assert count("shards") == sum(1 for s in manifest["shard"].to_pylist() if s) > 1
    assert count("runs") == 2 and "done_with_rejects" in dom  # the history has both runs
    # the second run had nothing to do: the status card and the last run's counters are the first run's, which made the output
    assert re.search(r'data-count="status">done_with_rejects \(run \w+ since: nothing to do\)<', dom)
    assert "1 runs that had nothing to do are not listed" in dom and "<td>records</td>" in dom
    assert dom.count("<img") == 3 * min(24, samples)  # source, mask over source, target per pair
    top_reason = rejects.group_by("reason").aggregate([("reason", "count")]).sort_by([("reason_count", "descending")]).to_pylist()[0]
    assert re.search(rf"<td>{top_reason['reason']}</td><td>{top_reason['reason_count']:,}</td>", dom)
    assert "entity.scores.annotation" in dom and "mask.area_ratio" in dom  # histograms of the signals


def test_an_s3_output_gives_the_same_counts(output, s3_bucket):
    s3 = boto3.client("s3")
    for path in output.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"out/{path.relative_to(output)}")
    local, remote = collect(str(output)), collect(f"s3://{s3_bucket}/out")
    assert remote["totals"] == local["totals"] and remote["units"] == local["units"]
    assert len(remote["sampled"].sheet) == len(local["sampled"].sheet) > 0
    missing = cli_in_process("report", "s3://no-such-bucket/out", "--out", "/dev/null")  # it said "holds no pipeline output"
    assert missing.returncode == 2 and "bucket 'no-such-bucket' is not reachable" in missing.stderr, missing.stderr


def test_only_the_sampled_samples_are_read(output, tmp_path):
    """Each shard cut right after its first two samples: the report still reads them, never the rest."""
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    for shard in dataset.committed_shards(str(copy)):
        members = dataset.shard_members(shard.uri, 2)
        end = max(m.offset + m.size for m in members)
        with open(shard.uri, "r+b") as f:
            f.truncate(end)
    data = collect(str(copy), per_shard=2, sheet_size=4)
    assert data["sampled"].samples_read == 2 * data["totals"]["shards"]
    assert len(data["sampled"].sheet) == 4 and "<svg" in render(data)


def _damage(uri: str, member: dataset.Member, data: bytes) -> None:
    with open(uri, "r+b") as f:
        f.seek(member.offset)
        f.write(data[: member.size])


def test_damaged_samples_are_listed_and_the_page_is_still_written(output, tmp_path):
    """One sample's json and another's source.jpg overwritten with zeros, a shard cut after its first sample: the
    page failed with a traceback
    (UnicodeDecodeError, then 'NoneType' has no attribute 'copy'); a cut shard was read without a word."""
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    first, second = dataset.committed_shards(str(copy))[:2]
    members = dataset.shard_members(first.uri, 2)
    json_of = next(m for m in members if m.name == "json")
    source_of = next(m for m in members if m.name == "source.jpg" and m.key != json_of.key)
    _damage(first.uri, json_of, bytes(json_of.size))
    _damage(first.uri, source_of, bytes(source_of.size))
    with open(second.uri, "r+b") as f:
        f.truncate(max(m.offset + m.size for m in dataset.shard_members(second.uri, 1)))  # its first sample only
    data = collect(str(copy), per_shard=32, sheet_size=100)
    damaged = "\n".join(data["sampled"].damaged)
    assert f"{Path(first.uri).name}: sample {json_of.key}: its json does not read" in damaged
    assert f"{Path(first.uri).name}: sample {source_of.key}: its source.jpg does not decode" in damaged
    assert f"{Path(second.uri).name}: 1 samples readable of the {second.samples} asked for" in damaged
    page = render(data)
    cut = tmp_path / "cut"  # the second half of a target.jpg zeroed: OpenCV drew it half grey, unflagged
    shutil.copytree(output, cut)
    shard = dataset.committed_shards(str(cut))[0]
    target_of = next(m for m in dataset.shard_members(shard.uri, 1) if m.name == "target.jpg")
    half = target_of.size // 2
    _damage(shard.uri, dataclasses.replace(target_of, offset=target_of.offset + half, size=target_of.size - half), bytes(target_of.size))
    short = "\n".join(collect(str(cut), per_shard=32, sheet_size=100)["sampled"].damaged)
    assert f"sample {target_of.key}: its target.jpg does not decode" in short, short
    assert 'id=damaged' in page and "3 damaged item(s)" in page and page.count("<div class=pair>") == len(data["sampled"].sheet) > 0


def test_the_page_is_not_written_into_the_output_s_own_files(output, tmp_path):
    """`--out OUT/_SUCCESS` was accepted: the run summary became HTML and every later report failed; a page in
    manifest/ made the output unreadable for train, report and verify."""
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    before = (copy / "_SUCCESS").read_bytes()
    for inside in ("_SUCCESS", "manifest/r.parquet", "shards/page.html", "runs/x.json"):
        done = cli("report", str(copy), "--out", str(copy / inside), check=False)
        assert done.returncode == 2 and "inside the output's own files" in done.stderr, inside
    assert (copy / "_SUCCESS").read_bytes() == before and not (copy / "manifest" / "r.parquet").exists()
    assert cli("report", str(copy), "--out", str(copy / "report.html")).returncode == 0  # beside them is fine


def test_the_runs_table_lists_the_newest_runs_first(output, tmp_path):
    """Runs were listed oldest first and cut at 200 rows: on a schedule, after ~50 days the page never showed a
    recent run again."""
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    summary = dataset.read_runs(str(copy))[0]
    for day in range(1, 251):  # older runs
        old = summary | {"run": f"2020{(day - 1) // 28 + 1:02d}{(day - 1) % 28 + 1:02d}T000000Zold{day}", "status": "done"}
        (copy / "runs" / f"{old['run']}.json").write_text(__import__("json").dumps(old))
    rows = collect(str(copy))["runs"]
    assert len(rows) == 251 and rows[0]["run"] == max(r["run"] for r in rows) and not rows[0]["run"].startswith("2020")
    assert rows[-1]["run"] == "20200101T000000Zold1" and rows[-1]["started"] == "2020-01-01 00:00"  # from its id: it wrote no shard
