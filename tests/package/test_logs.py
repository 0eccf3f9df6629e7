"""A run's own log file."""

from __future__ import annotations

import logging

import pytest

from pairmine import logs


def test_a_run_that_fails_says_why_in_its_own_log(tmp_path, capsys):
    """The terminal gets pairmine's one line; the run's log, read later, must say why the run stopped, in full."""
    with pytest.raises(RuntimeError):
        with logs.run_log(str(tmp_path), "r1"):
            logging.getLogger("pairmine").warning("started")
            raise RuntimeError("the disk is full")
    logged = (tmp_path / "logs" / "r1.log").read_text()
    assert "started" in logged and "the run stopped: RuntimeError: the disk is full" in logged and "Traceback" in logged
    assert "Traceback" not in capsys.readouterr().err


def test_a_run_log_on_s3_is_copied_up_while_the_run_goes(s3_bucket, monkeypatch):
    """A run killed on S3 (OOM, kill -9) never reaches its final upload: the copies are what is left."""
    import time

    from pairmine import storage

    monkeypatch.setattr(logs, "UPLOAD_EVERY", 0.2)
    with logs.run_log(f"s3://{s3_bucket}/out", "r2") as uri:
        logging.getLogger("pairmine").warning("half way")
        time.sleep(1.0)
        assert b"half way" in storage.read_bytes(uri)
    assert b"half way" in storage.read_bytes(uri)
