"""`pairmine verify`: a good output passes; each kind of damage is found, listed, and exits 1."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
from helpers import cli
from sample_inputs import write_loose_sa1b

from pairmine import dataset
from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.verify import verify


@pytest.fixture(scope="module")
def made(tmp_path_factory, ray_local) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    write_loose_sa1b(root / "loose", 6)
    run(SYN4REMOVAL, [str(root / "loose")], str(root / "out"), overrides=["group_size=2", "shards.max_samples=2"], progress_bars=False)
    return root / "loose", root / "out"


@pytest.fixture
def output(made, tmp_path) -> Path:
    return Path(shutil.copytree(made[1], tmp_path / "out"))


def _rewrite(shard: Path, change) -> None:
    """Rewrite a shard's samples through `change` and recommit its manifest row, so only the change is wrong."""
    samples = [s for s in dataset.iter_shard(dataset.Shard(str(shard), "syn4removal", "", 0, shard.stat().st_size, "", ()), verify=False)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for sample in map(change, samples):
            for name, data in sample.items():
                if name != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())
    manifest = shard.parent.parent / "manifest" / f"{shard.stem}.parquet"
    rows = pa.parquet.read_table(manifest).to_pylist()
    rows[0] |= {"bytes": len(buffer.getvalue()), "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    manifest.write_bytes(dataset.to_parquet(pa.Table.from_pylist(rows, schema=dataset.MANIFEST_SCHEMA)))


def test_a_good_output_passes_with_its_inputs(made):
    loose, out = made
    report = verify(str(out), [str(loose)])
    assert not report.problems and report.samples > 0 and report.inputs == {"units": 1, "ids": 6}
    done = cli("verify", str(out), "--input", str(loose), timeout=120)
    assert done.stdout.strip().splitlines()[-1].startswith(f"verify {out}: ok (") and "6 ids" in done.stdout


def _shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.tar"))


@pytest.mark.parametrize("damage, found", [
    (lambda out: (out / "shards" / "stray.tar").write_bytes(b"x"), "shards/stray.tar: no manifest row lists it"),
    (lambda out: (out / "manifest" / ".tmp-1-x.parquet").write_bytes(b"x"), "a temp file"),
    (lambda out: _shards(out)[0].write_bytes(_shards(out)[0].read_bytes()[:1024]), "the manifest says"),
    (lambda out: _rewrite(_shards(out)[0], lambda s: {k: v for k, v in s.items() if k != "alpha.png"}), "lacks alpha.png"),
    (lambda out: _rewrite(_shards(out)[0], lambda s: s | {"json": s["json"].replace(b'"seed":', b'"x": NaN, "seed":')}), "not strict JSON"),
    (lambda out: _rewrite(_shards(out)[0], lambda s: s | {"mask.png": b"not a png"}), "mask.png does not decode"),
])
def test_each_kind_of_damage_is_found(output, damage, found):
    damage(output)
    problems = verify(str(output)).problems
    assert any(found in p for p in problems), problems
    done = cli("verify", str(output), check=False, timeout=120)
    assert done.returncode == 1 and found in done.stdout and "problems" in done.stdout.splitlines()[-1]


def test_a_key_in_two_shards_and_an_input_accounted_twice(output):
    # two committed shards' rows (a group whose records were all rejected has a row with no keys)
    manifests = [(f, pa.parquet.read_table(f).to_pylist()) for f in sorted((output / "manifest").glob("*.parquet"))]
    (_, (row, *_)), (second, other) = [(f, rows) for f, rows in manifests if rows[0]["keys"]][:2]
    other[0]["keys"] = other[0]["keys"] + row["keys"][:1]
    other[0]["inputs"] = other[0]["inputs"] + row["inputs"]
    second.write_bytes(dataset.to_parquet(pa.Table.from_pylist(other, schema=dataset.MANIFEST_SCHEMA)))
    problems = verify(str(output)).problems
    assert any("is in 2 shards" in p for p in problems) and any("accounted for more than once" in p for p in problems)


def test_an_input_record_in_no_manifest_row_is_missing(made, output):
    loose, _ = made
    manifest = sorted((output / "manifest").glob("*.parquet"))[0]
    manifest.unlink()
    for folder in ("shards", "rejects"):
        for path in (output / folder).glob(f"{manifest.stem}.*"):
            path.unlink()
    problems = verify(str(output), [str(loose)]).problems
    assert any("ids in no sample and no reject" in p for p in problems), problems


def test_a_missing_output_is_one_line(tmp_path):
    done = cli("verify", str(tmp_path / "nowhere"), check=False, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"pairmine: error: output not found: {tmp_path / 'nowhere'}"



def test_a_folder_that_is_no_output_and_a_damaged_manifest_are_one_line(output, tmp_path):
    """A folder no run wrote to is not 'ok'; a manifest file that is not Parquet names itself (exit 1), in verify,
    report and a rerun alike, instead of a pyarrow traceback."""
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("hello")
    done = cli("verify", str(tmp_path / "unrelated"), check=False, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"pairmine: error: {tmp_path / 'unrelated'} holds no pipeline output (no shards/, manifest/, rejects/ or _SUCCESS)"
    damaged = sorted((output / "manifest").glob("*.parquet"))[0]
    damaged.write_bytes(b"not parquet")
    shutil.rmtree(output / "_index", ignore_errors=True)
    for args in (["verify", str(output)], ["report", str(output), "--out", str(tmp_path / "r.html")]):
        done = cli(*args, check=False, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith(f"pairmine: error: {damaged} is not a readable manifest file"), lines
