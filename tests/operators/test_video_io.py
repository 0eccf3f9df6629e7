"""Video reading: probe, index-exact segment decoding, PyAV/decord agreement, file-likes, bad files."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

from pairmine.operators.codecs import BadInput
from pairmine.operators.video_io import READERS, DecodeParams, _Clock, _decoded, analysis_size, deinterlace, probe, read_frames

BOTH = ("pyav", "decord")


@pytest.fixture(scope="module")
def videos(testdata):
    return testdata / "video"


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_probe_reads_resolution_fps_frames_and_codec(videos):
    info = probe(str(videos / "synth_static_dev.mp4"), DecodeParams())
    assert (info.width, info.height, info.fps, info.frames, info.codec) == (960, 540, 25.0, 150, "h264")
    assert info.duration == pytest.approx(150 / 25)
    assert info.pixel_aspect == (1, 1)


def test_probe_reads_the_pixel_aspect_of_anamorphic_footage(videos):
    """carphone's QCIF pixels are 128:117 (wider than tall): frames are written as stored, the json says how to show them."""
    info = probe(str(videos / "carphone_pristine.mp4"), DecodeParams())
    assert info.pixel_aspect == (128, 117)
    assert info.to_dict()["pixel_aspect"] == [128, 117]
    assert READERS["decord"].probe(str(videos / "carphone_pristine.mp4")).to_dict()["pixel_aspect"] is None  # cannot tell


@pytest.mark.parametrize("clip", ["synth_static_dev.mp4", "01_dog.mp4", "carphone_pristine.mp4"])
def test_pyav_and_decord_agree_on_frame_count_and_frames(videos, clip):
    path = str(videos / clip)
    infos = {name: READERS[name].probe(path) for name in BOTH}
    assert infos["pyav"].frames == infos["decord"].frames
    assert infos["pyav"].fps == pytest.approx(infos["decord"].fps)
    frames = infos["pyav"].frames
    picks = [0, 7, frames // 2, frames - 1]
    full = {name: read_frames(path, picks, (name,), None, 1) for name in BOTH}
    assert [f.index for f in full["pyav"].frames] == [f.index for f in full["decord"].frames] == picks
    for a, b in zip(full["pyav"].frames, full["decord"].frames):
        assert a.image.shape == b.image.shape == (infos["pyav"].height, infos["pyav"].width, 3)
        assert a.time == pytest.approx(b.time, abs=0.5 / infos["pyav"].fps)
        assert mae(a.image, b.image) < 1.0
    size = analysis_size(infos["pyav"].width, infos["pyav"].height, 320)
    small = {name: read_frames(path, picks, (name,), size, 1) for name in BOTH}
    for a, b in zip(small["pyav"].frames, small["decord"].frames):
        assert a.image.shape == b.image.shape == (size[1], size[0], 3)
        assert mae(a.image, b.image) < 6.0  # same frame, different scalers (swscale area vs decord's)


@pytest.mark.parametrize("reader", BOTH)
def test_a_segment_decodes_alone_to_the_same_frames(videos, reader):
    path = str(videos / "02_cups.mp4")  # keyframes at 0 and 250: both a seek back to a keyframe and a mid-GOP start
    everything = {f.index: f.image for f in read_frames(path, range(0, 300, 1), (reader,), (160, 90), 1).frames}
    for wanted in (range(60, 90, 3), range(252, 300, 5), [5, 299, 120]):
        decoded = read_frames(path, wanted, (reader,), (160, 90), 1)
        assert decoded.error is None
        assert [f.index for f in decoded.frames] == sorted(wanted)
        assert all(np.array_equal(f.image, everything[f.index]) for f in decoded.frames)


@pytest.mark.parametrize("reader", BOTH)
def test_file_like_source_gives_the_same_frames_as_the_path(videos, reader):
    path = videos / "synth_static_dev.mp4"
    info = READERS[reader].probe(lambda: open(path, "rb"))
    assert (info.width, info.height, info.fps, info.frames) == (960, 540, 25.0, 150)
    from_path = read_frames(str(path), range(40, 70, 3), (reader,), None, 1)
    from_file = read_frames(lambda: open(path, "rb"), range(40, 70, 3), (reader,), None, 1)
    assert from_file.error is None and len(from_file.frames) == 10
    assert all(np.array_equal(a.image, b.image) for a, b in zip(from_path.frames, from_file.frames))


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it."""

    def __init__(self, path, counter: list):
        super().__init__(path, "rb")
        self.counter = counter

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self.counter.append(n or 0)
        return n

    def read(self, size=-1):
        data = super().read(size)
        self.counter.append(len(data))
        return data


def test_pyav_reads_a_late_segment_by_range_decord_copies_everything(videos):
    path = videos / "02_cups.mp4"
    size = path.stat().st_size
    read = {}
    for reader in BOTH:
        counter: list[int] = []
        decoded = read_frames(lambda: CountingFile(path, counter), range(252, 300, 3), (reader,), (160, 90), 1)
        assert len(decoded.frames) == 16
        read[reader] = sum(counter)
    assert read["decord"] >= size
    assert read["pyav"] < size / 2  # the last GOP (frames 250-299) is a sixth of the clip


def test_indices_past_the_end_are_absent(videos):
    decoded = read_frames(str(videos / "synth_static_dev.mp4"), [148, 149, 150, 400], ("pyav",), (96, 54), 1)
    assert [f.index for f in decoded.frames] == [148, 149] and decoded.error is None


@pytest.fixture
def bad_files(videos, testdata, tmp_path):
    """Broken copies of real files: truncated (index at the end, index at the start), empty, garbage, a still image."""
    static, dog = (videos / "synth_static_dev.mp4").read_bytes(), (videos / "01_dog.mp4").read_bytes()
    files = {
        "truncated_index_at_end": static[: len(static) // 2],
        "truncated_index_at_start": dog[: len(dog) * 2 // 5],
        "empty": b"",
        "garbage": np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.mp4"
        paths[name].write_bytes(data)
    paths["still_image"] = tmp_path / "still_image.mp4"
    shutil.copy(testdata / "photos" / "astronaut.png", paths["still_image"])
    return paths


@pytest.mark.parametrize(
    "name, reason",
    [("truncated_index_at_end", "unreadable"), ("empty", "empty_file"), ("garbage", "unreadable"), ("still_image", "not_a_video")],
)
def test_unreadable_files_are_rejected_with_a_reason(bad_files, name, reason):
    with pytest.raises(BadInput) as caught:
        probe(str(bad_files[name]), DecodeParams())
    assert caught.value.reason == reason and caught.value.detail


@pytest.mark.parametrize("order", [("pyav", "decord"), ("decord", "pyav")])
def test_truncated_stream_keeps_what_decodes_and_falls_back_to_pyav(bad_files, order):
    path = str(bad_files["truncated_index_at_start"])
    info = probe(path, DecodeParams())  # the index survives: the header still promises every frame
    decoded = read_frames(path, range(0, info.frames, 3), order, (160, 90), 1)
    assert decoded.reader == "pyav"  # decord fails on the whole file, PyAV decodes up to the cut
    assert decoded.error is not None and decoded.error.reason == "decode_error"
    assert 0 < len(decoded.frames) < len(range(0, info.frames, 3))
    assert decoded.failed == ("decord: unreadable",)


def test_absurd_resolution_and_too_short_videos_are_rejected(videos):
    path = str(videos / "synth_static_dev.mp4")
    with pytest.raises(BadInput, match="video_too_large"):
        probe(path, DecodeParams(max_pixels=960 * 540 - 1))
    with pytest.raises(BadInput, match="too_short"):
        probe(path, DecodeParams(min_frames=151))


def test_analysis_size_keeps_the_aspect_and_never_upscales():
    assert analysis_size(1920, 1080, 480) == (480, 270)
    assert analysis_size(1080, 1920, 480) == (270, 480)
    assert analysis_size(176, 144, 480) == (176, 144)


def _all_frames(path: str) -> dict[int, np.ndarray]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        clock = _Clock.of(stream)
        return {clock.index(f): f.to_ndarray(format="bgr24") for f in container.decode(stream)}


def _mjpeg(path: str, frames: int = 30) -> str:
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 64))
    for k in range(frames):
        image = np.zeros((64, 96, 3), np.uint8)
        image[:, k * 3 : k * 3 + 8] = 255
        writer.write(image)
    writer.release()
    return path


def _encoded(path: str, codec: str, frames: int = 40, gop: int | None = None, pts_ms: list[int] | None = None,
             options: dict[str, str] | None = None, rate: int = 25) -> str:
    """A small clip with B-frames / non-reference frames where the codec has them (a keyframe every `gop`);
    `pts_ms`: each frame's timestamp in ms (default 25 fps); `options`: the encoder's; `rate`: the declared one."""
    from fractions import Fraction

    import av

    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        if pts_ms:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if gop:
            stream.codec_context.gop_size = gop
        for k in range(frames):
            image = np.zeros((96, 128, 3), np.uint8)
            c = k % 40  # the same pictures as ever for the first 40 frames, then again shifted
            image[:, c * 2 + k // 40 : c * 2 + k // 40 + 12] = (40 + 5 * c, 200, 255 - 4 * c)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if pts_ms:
                frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec", ["libsvtav1", "libx265", "mpeg2video"])
def test_every_codec_gives_exactly_the_wanted_frames(tmp_path, codec):
    """Whatever the decoder does with skip_frame (libdav1d reads it once, when it opens), a read returns the
    wanted frames, bit-identical to a full decode."""
    path = _encoded(str(tmp_path / "clip.mkv"), codec)
    everything = _all_frames(path)
    for wanted in (list(range(1, 38, 3)), list(range(5, 40)), [0, 17, 39]):
        frames = read_frames(path, wanted, ("pyav",), None, 1).frames
        assert [f.index for f in frames] == wanted, codec
        assert all(np.array_equal(f.image, everything[f.index]) for f in frames)


def test_mpeg_ts_reads_every_wanted_frame_though_its_seeks_land_on_the_next_keyframe(tmp_path):
    """MPEG-TS seeks forward to the next keyframe, even to the stream's start time: the first keyframe interval
    was silently never read and frames after the last keyframe came back as nothing."""
    path = _encoded(str(tmp_path / "clip.ts"), "libx264", frames=130, gop=50)
    everything = _all_frames(path)
    assert len(everything) == 130
    for wanted in ([0, 5, 30], [60, 70], [105, 129], [0, 55, 101, 128]):
        frames = read_frames(path, wanted, ("pyav",), None, 1).frames
        assert [f.index for f in frames] == wanted
        assert all(np.array_equal(f.image, everything[f.index]) for f in frames)


def test_an_avi_whose_first_frame_is_stamped_after_its_start_is_read_by_pyav(tmp_path):
    """FFmpeg's H.264 AVIs stamp their first frame 1 (2 with B-frames) while the stream starts at 0: a read of the
    first frames sought before the start, which the AVI demuxer refuses, and every segment was a decode_error
    (the decord fallback then returned frames of other times). Without B-frames the frames are exact; an AVI
    holds no presentation times, so with B-frames FFmpeg's guesses after a seek can be a frame or two off."""
    path = _encoded(str(tmp_path / "clip.avi"), "libx264", frames=60, gop=25, options={"bf": "0"})
    everything = _all_frames(path)
    first = min(everything)
    assert first > 0, "the quirk this test is about"
    for wanted in ([0, 3, 30], [first, 40, 50]):  # 0: what a stride's analysis asks for, before the first stamp
        frames = read_frames(path, wanted, ("pyav",), None, 1).frames
        assert [f.index for f in frames] == [max(i, first) for i in wanted]  # a missing number: the next frame answers
        assert all(np.array_equal(f.image, everything[f.index]) for f in frames)


def test_recordings_joined_end_to_end_are_rejected_not_read_in_part(tmp_path):
    """`cat a.ts b.ts` (a DVR export): timestamps restart at the join, so a seek by timestamp lands in either part
    and the first part's frames were silently never read."""
    from pairmine.operators.video_io import check_timeline

    parts = [_encoded(str(tmp_path / f"{name}.ts"), "libx264", frames=50, gop=25) for name in "ab"]
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(open(p, "rb").read() for p in parts))
    with pytest.raises(BadInput, match="jump back 1 time") as bad:
        check_timeline(str(joined))
    assert bad.value.reason == "timestamp_discontinuity"
    check_timeline(parts[0])  # one recording, and other containers, pass
    check_timeline(_encoded(str(tmp_path / "clip.mp4"), "libx264", frames=50))


def test_a_paused_recording_is_told_apart_and_read_by_decord_in_decoding_order(tmp_path):
    """Motion-triggered CCTV: 2 s, a minute's pause, 2 s. At the average rate (~0.8 fps) PyAV's numbering gives
    ~12 frames one number, so most are unreachable: the timeline check says so (from the MP4's index, nothing
    decoded), and decord numbers the frames in order."""
    import av

    from pairmine.operators.video_io import check_timeline

    pts = [40 * k for k in range(50)] + [60000 + 40 * k for k in range(50)]
    path = _encoded(str(tmp_path / "paused.mp4"), "libx264", frames=100, gop=25, pts_ms=pts)
    assert not check_timeline(path)
    assert check_timeline(_encoded(str(tmp_path / "steady.mp4"), "libx264", frames=60))
    with av.open(path) as container:
        in_order = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    wanted = list(range(0, 100, 3))
    read = read_frames(path, wanted, ("decord",), None, 1)
    assert [f.index for f in read.frames] == wanted
    assert max(mae(f.image, in_order[f.index]) for f in read.frames) < 2  # decord's own colour conversion
    assert len({f.index for f in read_frames(path, wanted, ("pyav",), None, 1).frames}) < len(wanted) / 2, "what PyAV's numbering reaches"


def test_a_slow_mpeg_ts_with_b_frames_is_one_recording(tmp_path):
    """At 1 fps, B-frame reordering spans seconds: only decoding timestamps tell a restart from it."""
    from pairmine.operators.video_io import check_timeline

    assert check_timeline(_encoded(str(tmp_path / "slow.ts"), "libx264", frames=40, gop=12, pts_ms=[1000 * k for k in range(40)]))


@pytest.mark.parametrize("clip", ["01_dog.mp4", "intra-only MJPEG"])
def test_frames_nothing_depends_on_are_left_undecoded_and_the_wanted_ones_are_exact(videos, tmp_path, clip):
    import av

    path = _mjpeg(str(tmp_path / "clip.avi")) if clip.startswith("intra") else str(videos / clip)
    everything = _all_frames(path)
    wanted = set(range(0, len(everything), 3))
    with av.open(path) as container:
        stream = container.streams.video[0]
        clock = _Clock.of(stream)
        decoded = {clock.index(f): f.to_ndarray(format="bgr24") for f in _decoded(container, stream, clock, wanted)}
        intra_only = stream.codec_context.codec.intra_only
    assert wanted <= decoded.keys() and all(np.array_equal(decoded[k], everything[k]) for k in wanted), "bit-identical"
    if intra_only:
        assert decoded.keys() == wanted, "an intra-only codec decodes only the wanted frames"
    else:  # H.264 from x264 with B-frames: its non-reference frames are skipped
        assert len(decoded) < len(everything), f"{len(decoded)} of {len(everything)} frames decoded"
    assert [f.index for f in read_frames(path, sorted(wanted), ("pyav",), None, 1).frames] == sorted(wanted)


def test_the_video_stream_is_ffmpegs_choice_not_a_cover_picture_listed_first(tmp_path):
    """A one-frame MJPEG track before the real one made the video `too_short` (the first track was taken)."""
    import av

    path = str(tmp_path / "cover.mkv")
    with av.open(path, "w") as container:
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 128, 96, "yuv420p"
        pictures = [(cover, np.full((48, 64, 3), 128, np.uint8))]
        pictures += [(video, np.roll(np.eye(96, 128, dtype=np.uint8) * 255, k, axis=1)[..., None].repeat(3, axis=2)) for k in range(30)]
        for stream, image in [*pictures, (cover, None), (video, None)]:
            for packet in stream.encode(None if image is None else av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
    info = probe(path, DecodeParams())
    assert (info.width, info.height, info.frames, info.codec) == (128, 96, 30, "h264")
    assert [f.image.shape for f in read_frames(path, [0, 29], ("pyav",), None, 1).frames] == [(96, 128, 3)] * 2


def test_a_video_whose_header_gives_no_length_is_counted(tmp_path):
    """WebM written to a pipe (browser recordings, live dumps) has no Duration: it was `too_short`, 0 frames."""
    import av

    class Pipe(io.RawIOBase):  # not seekable: the muxer cannot go back to write the duration
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, chunk):
            self.data += bytes(chunk)
            return len(chunk)

    pipe, path = Pipe(), tmp_path / "live.webm"
    with av.open(pipe, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for k in [*range(30), None]:
            image = None if k is None else np.roll(np.eye(96, 128, dtype=np.uint8) * 255, 3 * k, axis=1)[..., None].repeat(3, axis=2)
            for packet in stream.encode(None if image is None else av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
    path.write_bytes(pipe.data)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0 and container.duration is None, "the clip has no length in its header"
    info = probe(str(path), DecodeParams())
    assert (info.frames, info.duration) == (30, 1.2)
    assert [f.index for f in read_frames(str(path), [0, 14, 29], ("pyav",), None, 1).frames] == [0, 14, 29]


def test_a_header_that_claims_the_wrong_length_is_corrected_from_the_stream_end(tmp_path):
    """An MKV whose Duration says 27 hours planned 3,333 segments of frames that do not exist."""
    import struct

    import av

    path = _encoded(str(tmp_path / "clip.mkv"), "libx264", frames=60, gop=25)
    data = bytearray(open(path, "rb").read())
    at = data.find(b"\x44\x89")  # Matroska's Duration element: ID, size, value (a float in timecode units, ms)
    width = data[at + 2] & 0x7F
    data[at + 3 : at + 3 + width] = struct.pack(">d" if width == 8 else ">f", 1e8)
    wrong = tmp_path / "wrong.mkv"
    wrong.write_bytes(bytes(data))
    with av.open(str(wrong)) as container:
        assert container.duration > 1e10, "the header claims about 27 hours"
    assert probe(str(wrong), DecodeParams()).frames == probe(path, DecodeParams()).frames == 60


def _mkv(path, video_start_s: float = 0.0, audio_s: float = 0.0) -> str:
    """A complete 5 s MKV at 10 fps (50 frames): its video starting late, or with an audio track outlasting it."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono") if audio_s else None
        first = round(video_start_s * 10)
        for k in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * k, np.uint8), format="bgr24")
            frame.pts, frame.time_base = first + k, Fraction(1, 10)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for k in range(round(audio_s * 10)):  # 0.1 s of silence each
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts, samples.time_base = 8000, 800 * k, Fraction(1, 8000)
            for packet in audio.encode(samples):
                out.mux(packet)
        if audio:
            for packet in audio.encode():
                out.mux(packet)
    return str(path)


def test_a_complete_mkv_whose_video_starts_late_or_ends_before_its_audio_is_not_cut_short(tmp_path):
    """The container's duration spans every stream from 0: measured against the video's last packet alone, these
    complete files read as cut short and got a truncated_video reject for frames that never existed."""
    for path in (_mkv(tmp_path / "late.mkv", video_start_s=2.0), _mkv(tmp_path / "audio.mkv", audio_s=8.0)):
        info = probe(path, DecodeParams())
        assert (info.frames, info.declared_frames) in ((50, 0), (70, 0)), (path, info)
    whole = _mkv(tmp_path / "whole.mkv", audio_s=5.0)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(open(whole, "rb").read()[: os.path.getsize(whole) * 11 // 20])
    info = probe(str(cut), DecodeParams())
    assert info.frames < 40 and info.declared_frames == pytest.approx(50, abs=3), "cut short: the header's 5 s are promised"


def test_a_header_a_second_too_long_ends_the_segment_at_the_stream_s_end_without_a_reject(tmp_path):
    """An MKV whose audio outlasts its video by under a second keeps its duration's frame count (59 for 50 frames),
    as do FLVs with B-frames and MP4s trimmed by an edit list: the last segment got a truncated_video reject for
    frames that never existed. A cut of more than a second still is one."""
    from pairmine.operators.video4removal import Video4RemovalParams, analyse_segment

    path = _mkv(tmp_path / "audio.mkv", audio_s=5.9)
    info = probe(path, DecodeParams())
    assert info.frames > 50, "the header overcount this test is about"
    work = analyse_segment("audio.mkv", path, 0, info.frames, Video4RemovalParams())
    assert not [r for r in work.rejects if r.reason == "truncated_video"], work.rejects
    assert work.stats.counts["frames_short_of_header"] > 0


def test_an_mkv_declaring_its_time_base_as_its_rate_is_numbered_by_its_frames(tmp_path):
    """An MKV whose default duration is its 1-ms time base declares 1000 fps for 25-fps frames: frames were numbered
    in ms, so a stride analysed every frame and the per-frame camera motion was divided by 40 (a pan passed)."""
    path = _encoded(str(tmp_path / "clip.mkv"), "libx264", frames=50, pts_ms=[40 * k for k in range(50)], rate=1000)
    import av

    with av.open(path) as container:
        assert container.streams.video[0].average_rate == 1000, "the declared rate this test is about"
    info = probe(path, DecodeParams())
    assert (info.fps, info.frames) == (25.0, 50)
    everything = _all_frames(path)
    assert sorted(everything) == list(range(50))
    frames = read_frames(path, [0, 3, 27, 49], ("pyav",), None, 1).frames
    assert [f.index for f in frames] == [0, 3, 27, 49] and all(np.array_equal(f.image, everything[f.index]) for f in frames)


def test_deinterlace_fills_a_moving_object_s_combs_and_keeps_static_detail(videos):
    """Two moments woven row by row (a box 6 px further in the bottom field) over a textured, noisy static scene: the combs
    take the top field's picture; the scene's pixels, noise included, stay as they are (but a rare patch that weaves by chance); a progressive frame
    read from a file is not flagged."""
    import cv2

    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (3, 3), 0)
    scene = np.clip(texture + rng.normal(0, 6, texture.shape), 0, 255).astype(np.uint8)  # with sensor noise
    top, bottom = scene.copy(), scene.copy()
    top[40:80, 50:90], bottom[40:80, 56:96] = (20, 20, 240), (20, 20, 240)
    woven = top.copy()
    woven[1::2] = bottom[1::2]
    out = deinterlace(woven)
    away = np.ones(scene.shape[:2], bool)
    away[36:84, 44:102] = False
    kept = (out[away] == woven[away]).all(axis=-1).mean()
    assert kept > 0.995, f"static parts keep both fields: {kept:.4f}"
    assert mae(out[40:80, 44:102], top[40:80, 44:102]) < 0.2 * mae(woven[40:80, 44:102], top[40:80, 44:102])
    (frame,) = read_frames(str(videos / "synth_static_dev.mp4"), [3], ("pyav",), None, 1).frames
    assert not frame.interlaced
