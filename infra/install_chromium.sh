#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/pipelines/test_report.py): Debian's `chromium`
# package. Best effort: without root or apt the test is skipped and says why.
set -uo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "chromium not installed (needs root and apt-get): the report's browser test will be skipped"
    exit 0
fi
echo "installing chromium for the report test (apt-get, about 20 s)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
    || echo "could not install chromium: the report's browser test will be skipped"
