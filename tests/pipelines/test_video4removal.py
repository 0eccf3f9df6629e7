"""Video4Removal end to end on a local Ray: ground truth, moving cameras, bad files, segments, S3."""

from __future__ import annotations

import json
import shutil

import boto3
import numpy as np
from helpers import check_sample, decode, read_parquet_dir, read_samples
from sample_inputs import TESTDATA

from pairmine.pipelines.dedup import BucketCounter, DedupParams
from pairmine.pipelines.run import run
from pairmine.pipelines.video4removal import VIDEO4REMOVAL, Video4RemovalConfig, analyse, encode, segments_of

VIDEO = TESTDATA / "video"
STATIC = VIDEO / "synth_static_dev.mp4"
MOVING = ("synth_pan_dev.mp4", "bikes.mp4", "carphone_pristine.mp4")


def _run(inputs, output, *overrides):
    return run(VIDEO4REMOVAL, [str(i) for i in inputs], str(output), overrides=list(overrides), progress_bars=False)


def test_pairs_match_the_ground_truth_and_moving_cameras_give_none(tmp_path, ray_local):
    out = tmp_path / "out"
    summary = _run([STATIC, *(VIDEO / m for m in MOVING)], out)
    samples = read_samples(str(out))
    assert samples and summary["written"]["samples"] == len(samples)
    truth = np.load(VIDEO / "synth_static_dev.gt.npz")["masks"] > 0
    for sample in samples:
        meta = check_sample(sample, "video4removal")
        assert meta["video"] == "synth_static_dev.mp4" and meta["masker"] == "mog" and "model" not in meta  # no model ran
        mask = decode(sample["mask.png"]) > 0
        source_truth = truth[meta["source"]["frame"]]
        assert mask.shape == source_truth.shape
        iou = (mask & source_truth).sum() / (mask | source_truth).sum()
        assert iou >= 0.6, f"{sample['__key__']}: IoU {iou:.3f} with the ground truth"
        assert truth[meta["target"]["frame"]].sum() == 0, "the target frame still shows the object"
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    # the same object crossing a static scene: its crops hash alike (one bucket), and every pair's signals are summarised
    phashes = [json.loads(s["json"])["phash"] for s in samples]
    assert len(phashes) > 1 and BucketCounter(DedupParams(max_per_bucket=1)).admit(phashes) == [True] + [False] * (len(phashes) - 1)
    assert set(summary["quality"]) == {"exposure_delta", "residual", "sharpness_ratio"}
    assert summary["quality"]["residual"]["count"] == len(samples)
    rejects = read_parquet_dir(str(out / "rejects"))
    for name in MOVING:
        reasons = {r["reason"] for r in rejects if r["input"].startswith(f"{name}#")}
        assert reasons == {"camera_motion"}, f"{name}: {reasons}"
        assert all("camera motion" in r["detail"] for r in rejects if r["input"].startswith(f"{name}#"))


def test_bad_video_files_are_rejected_and_the_job_completes(tmp_path, ray_local):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(STATIC, folder / "good.mp4")
    data = STATIC.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n" * 100)
    (folder / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (folder / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    out = tmp_path / "out"
    summary = _run([folder], out, "segment_seconds=3")
    rejects = read_parquet_dir(str(out / "rejects"))
    by_video = {}
    for r in rejects:
        by_video.setdefault(r["input"].split("#")[0], set()).add((r["stage"], r["reason"]))
    for name in ("truncated.mp4", "empty.mp4", "notes.mp4", "noise.mkv", "gone.mp4"):
        assert name in by_video, f"{name} vanished without a reject"
    assert ("read", "empty_file") in by_video["empty.mp4"]
    assert all(stage in ("read", "decode") for stage, _ in by_video["notes.mp4"] | by_video["noise.mkv"])
    assert {json.loads(s["json"])["video"] for s in read_samples(str(out))} == {"good.mp4"}
    assert summary["units"]["given"] == 6
    # verify cuts the videos as the run did (its segment_seconds, not the default) and counts the dangling link's reject
    from pairmine.pipelines.verify import verify

    report = verify(str(out), [str(folder)], samples=False)
    assert not report.problems and report.inputs == {"units": 6, "ids": 7}, report.problems


def test_long_videos_are_split_into_segments_resumed_and_not_redone(tmp_path, ray_local):
    overrides = ("segment_seconds=3", "shards.max_samples=1")
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    summary = _run([STATIC], clean, *overrides)
    assert summary["counts"]["segments"] == 2 and summary["written"]["samples"] >= 2  # 6 s of video
    consumed = sorted(i for r in read_parquet_dir(str(clean / "manifest")) for e in r["inputs"] for i in e["ids"])
    assert consumed == ["0-75", "75-150"]

    _run([STATIC], resumed, *overrides)
    import pyarrow.parquet as pq

    lost = sorted((resumed / "manifest").iterdir())[0]
    lost_segments = [i for e in pq.read_table(lost).to_pylist()[0]["inputs"] for i in e["ids"]]
    lost.unlink()  # as if killed before that shard was committed
    again = _run([STATIC], resumed, *overrides)
    assert again["counts"]["segments"] == len(lost_segments) == 1, "only the lost segment is redone"
    keys = sorted(s["__key__"] for s in read_samples(str(resumed)))
    assert keys == sorted(s["__key__"] for s in read_samples(str(clean))) and len(keys) == len(set(keys))
    assert _run([STATIC], resumed, *overrides)["units"]["already_complete"] == 1


def test_s3_videos_in_and_shards_out(tmp_path, ray_local, s3_bucket):
    s3 = boto3.client("s3")
    s3.upload_file(str(STATIC), s3_bucket, "in/cam1/static.mp4")
    s3.upload_file(str(VIDEO / "synth_pan_dev.mp4"), s3_bucket, "in/cam2/pan.mp4")
    summary = _run([f"s3://{s3_bucket}/in/"], f"s3://{s3_bucket}/out")
    assert summary["units"]["given"] == 2 and summary["written"]["samples"] > 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]]
    shards = [k for k in keys if k.endswith(".tar")]
    local = tmp_path / "mirror" / "shards"
    local.mkdir(parents=True)
    for key in shards:
        s3.download_file(s3_bucket, key, str(local / key.rsplit("/", 1)[1]))
    samples = read_samples(str(local.parent))
    assert len(samples) == summary["written"]["samples"]
    assert {json.loads(check_sample(s, "video4removal") and s["json"])["video"] for s in samples} == {"cam1/static.mp4"}
    assert "out/_SUCCESS" in keys and any(k.startswith("out/rejects/") for k in keys)


def test_a_video_gone_since_it_was_listed_is_a_reject_that_leaves_it_to_do(tmp_path):
    """Moved or deleted by its producer after the run listed it: said as such, and not counted done."""
    row = {"unit": "cam.mp4", "uri": str(tmp_path / "cam.mp4"), "problem": "", "reason": "unreadable_name"}
    (segment,) = segments_of(row, Video4RemovalConfig(), {})
    assert segment["unit_total"] == -1, "a unit without a total is never complete"
    analysed = analyse(segment, Video4RemovalConfig())
    work = analysed["item"]
    assert [(r.reason, r.stage) for r in work.rejects] == [("input_vanished", "read")] and "was gone" in work.rejects[0].detail
    packed = encode(analysed, Video4RemovalConfig(), "h")
    assert packed["consumed"] == [] and packed["unit_total"] == -1, "it accounts for no segment of the video"


def test_recordings_joined_end_to_end_are_one_reject_saying_so(tmp_path):
    """Two MPEG-TS recordings concatenated: planned as one reject with the reason (checked once per video, at
    planning), not mined in part with misnumbered frames."""
    from fractions import Fraction

    import av

    clip = TESTDATA / "video" / "synth_static_dev.mp4"

    parts = []
    for name, (first, last) in {"a": (0, 40), "b": (40, 80)}.items():
        parts.append(tmp_path / f"{name}.ts")
        with av.open(str(clip)) as source, av.open(str(parts[-1]), "w", format="mpegts") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
            for k, frame in enumerate(source.decode(video=0)):
                if first <= k < last:
                    small = frame.reformat(320, 180)
                    small.pts, small.time_base = k - first, Fraction(1, 25)  # each part's own timestamps, from 0
                    for packet in stream.encode(small):
                        out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    row = {"unit": "joined.ts", "uri": str(joined), "problem": "", "reason": "unreadable_name"}
    (segment,) = segments_of(row, Video4RemovalConfig(), {})
    work = analyse(segment, Video4RemovalConfig())["item"]
    assert [(r.reason, r.stage) for r in work.rejects] == [("timestamp_discontinuity", "read")]
    assert "joined end to end" in work.rejects[0].detail
    assert encode(analyse(segment, Video4RemovalConfig()), Video4RemovalConfig(), "h")["unit_total"] == 1, "a bad file, done"
    assert segments_of(row | {"uri": str(parts[0])}, Video4RemovalConfig(), {})[0]["segment"] != "0-0"


def test_a_paused_recording_is_read_by_decord_in_every_segment(tmp_path):
    """Decided once per video at planning: segments of one video read with two numberings would cover frames twice
    or never. Without the fallback, the video is one reject that says why."""
    from fractions import Fraction

    import av

    path = tmp_path / "paused.mp4"
    with av.open(str(TESTDATA / "video" / "synth_static_dev.mp4")) as source, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for k, frame in enumerate(source.decode(video=0)):  # 3 s, a minute's pause, 3 s
            small = frame.reformat(320, 180)
            small.pts, small.time_base = 40 * k + (60000 if k >= 75 else 0), Fraction(1, 1000)
            for packet in stream.encode(small):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    row = {"unit": "paused.mp4", "uri": str(path), "problem": "", "reason": "unreadable_name", "reader": ""}
    segments = segments_of(row, Video4RemovalConfig(), {})
    assert segments and {s["reader"] for s in segments} == {"decord"}
    works = [analyse(s, Video4RemovalConfig())["item"] for s in segments]
    assert {w.reader for w in works} == {"decord"} and sum(w.stats.counts["frames"] for w in works) == 50, "every third of 150 frames"
    pinned = Video4RemovalConfig(decode={"fallback": False})
    (refused,) = segments_of(row, pinned, {})
    work = analyse(refused, pinned)["item"]
    assert [(r.reason, r.stage) for r in work.rejects] == [("irregular_timestamps", "read")]


def test_a_cut_off_mkv_plans_its_missing_tail_as_one_reject(tmp_path):
    """A partial download keeps its header's Duration: the frames it promises past the stream's end are a
    truncated_video reject (they were silently absent), and the share of pairs per segment counts mined ones only."""
    import av

    whole = tmp_path / "whole.mkv"
    with av.open(str(TESTDATA / "video" / "synth_static_dev.mp4")) as source, av.open(str(whole), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for frame in source.decode(video=0):
            for packet in stream.encode(frame.reformat(320, 180)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 5])
    config = Video4RemovalConfig(segment_seconds=2)
    row = {"unit": "cut.mkv", "uri": str(cut), "problem": "", "reason": "unreadable_name", "reader": ""}
    *mined, tail = segments_of(row, config, {})
    end = mined[-1]["stop"]
    assert 40 < end < 120 and (tail["start"], tail["stop"], tail["reason"]) == (end, 150, "truncated_video")
    assert {s["unit_total"] for s in [*mined, tail]} == {len(mined) + 1} and {s["mined"] for s in [*mined, tail]} == {len(mined)}
    work = analyse(tail, config)["item"]
    assert [(r.input, r.stage, r.reason) for r in work.rejects] == [(f"cut.mkv#{end}-150", "read", "truncated_video")]
    assert "header gives 150 frames" in work.rejects[0].detail and not work.stats.counts["frames"]
    assert encode(analyse(tail, config), config, "h")["consumed"] == [tail["segment"]], "the tail is done once rejected"
    whole_rows = segments_of(row | {"uri": str(whole)}, config, {})
    assert whole_rows[-1]["stop"] == 150 and not any(r["problem"] for r in whole_rows)


def _write_ts(path, frames, codec: str = "libx264", options: dict | None = None, field_order: int | None = None) -> None:
    """An MPEG-TS at 25 fps of `frames`: (pts, BGR image) pairs of one size."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format="mpegts") as out:
        stream = None
        for pts, image in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=25, options=options or {})
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                if field_order:
                    stream.codec_context.field_order = field_order
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _resized_mid_way(path) -> None:
    """An MPEG-TS of a red box crossing a grey scene, 5 s at 480x272 then 5 s at 640x360, timestamps continuous
    (a stream re-encoded mid-way: broadcast captures, some DVRs)."""

    def picture(k: int, width: int, height: int) -> np.ndarray:
        image = np.full((height, width, 3), 90, np.uint8)
        image[:, : width // 4] = 40
        if 30 <= k % 125 < 90:
            x = (k % 125 - 30) * width // 80
            image[height // 3 : height // 3 + height // 4, x : x + width // 10] = (30, 30, 250)
        return image

    with open(path, "wb") as joined:
        for first, (width, height) in ((0, (480, 272)), (127, (640, 360))):  # 127: past the muxer's 2-frame offset
            part = path.with_suffix(f".{width}.ts")
            _write_ts(part, ((k, picture(k, width, height)) for k in range(first, first + 125)))
            joined.write(part.read_bytes())
            part.unlink()


def test_a_stream_that_changes_size_gets_its_crops_in_each_frame_s_own_pixels(tmp_path, ray_local):
    """Crops were scaled by the header's width (the stream's first size): after the switch a region pair cut the
    object in two and its mask missed half of it. Its json's video_info gave the first size too."""
    (tmp_path / "in").mkdir()
    _resized_mid_way(tmp_path / "in" / "resized.ts")
    out = tmp_path / "out"
    _run([tmp_path / "in"], out, "region.mode=region")
    sizes = set()
    for sample in read_samples(str(out)):
        source, mask = decode(sample["source.jpg"]), decode(sample["mask.png"]) > 0
        red = (source[..., 0] > 200) & (source[..., 2] < 80)  # RGB
        meta = json.loads(sample["json"])
        sizes.add(meta["source"]["frame"] >= 125)  # from the 640x360 part
        frame = (640, 360) if meta["source"]["frame"] >= 125 else (480, 272)
        assert (meta["video_info"]["width"], meta["video_info"]["height"]) == frame, "the frames' own size, not the crop's"
        x0, y0, x1, y1 = meta["crop"]
        assert x1 <= frame[0] and y1 <= frame[1] and (x1 - x0, y1 - y0) == (source.shape[1], source.shape[0])
        assert red.any() and (red & mask).sum() >= 0.98 * red.sum(), "the whole object inside its crop's mask"
    assert sizes == {False, True}, "a region pair from each size"


def _woven(path, width=320, height=240) -> None:
    """An interlaced MPEG-2 of a red box crossing a textured static scene: each frame weaves the scene at t (top
    field, even rows) with the scene 20 ms later (bottom field), as a camera scanning fields does."""
    import cv2

    scene = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 0)

    def at(t: float) -> np.ndarray:
        image = scene.copy()
        if 1.2 <= t < 3.6:
            x = int((t - 1.2) * 100)  # 2 px per field: a walker crossing a CCTV view
            image[80:160, x : x + 50] = (30, 30, 250)
        return image

    def woven(k: int) -> np.ndarray:
        image = at(k / 25)
        image[1::2] = at(k / 25 + 0.02)[1::2]
        return image

    _write_ts(path, ((k, woven(k)) for k in range(150)), "mpeg2video", {"flags": "+ilme+ildct", "b": "6M"}, field_order=2)  # top first


def _combs(image: np.ndarray) -> int:
    """Pixels `deinterlace` fills: the combs of two moments woven together."""
    from pairmine.operators.video_io import deinterlace

    return int((deinterlace(image) != image).any(axis=-1).sum())


def test_interlaced_frames_are_written_without_combs_and_say_they_were_interlaced(tmp_path, ray_local):
    """Interlaced footage was written as stored: the moving object's two fields showed as combs on its edges in the
    source, and nothing in the json said the video was interlaced."""
    from pairmine.operators.video_io import read_frames

    (tmp_path / "in").mkdir()
    clip = tmp_path / "in" / "woven.ts"
    _woven(clip)
    summary = _run([tmp_path / "in"], tmp_path / "out")
    samples = read_samples(str(tmp_path / "out"))
    assert samples and summary["counts"]["deinterlaced_frames"] > 0
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["video_info"]["interlaced"] is True
        (stored,) = read_frames(str(clip), [meta["source"]["frame"]], ("pyav",), None, 1).frames
        assert stored.interlaced and _combs(stored.image) > 200, "the object's combs, as stored"
        written = _combs(decode(sample["source.jpg"])[..., ::-1])
        assert written < _combs(stored.image) / 10, (written, _combs(stored.image))
