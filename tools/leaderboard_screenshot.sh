#!/usr/bin/env bash
# Look at the leaderboard HTML page as a browser draws it (issue 18): render it with
# `bench leaderboard --html` and screenshot it in headless Chromium (Debian: apt-get install chromium).
#   tools/leaderboard_screenshot.sh [OUT_DIR] [extra bench leaderboard flags, e.g. --results runs/x]
# Prints the PNG's path; open it and check the intro is formatted text (no raw Markdown), every table
# fits the page and the bar charts show. Chromium loads only the local file (no network).
set -euo pipefail
out=${1:-/tmp/leaderboard-check}
shift || true
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "no chromium: apt-get install chromium" >&2
    exit 1
fi
mkdir -p "$out"
bench --quiet leaderboard --html "$out/board.html" "$@" >/dev/null
# --no-sandbox: root in a container has no user namespace for Chromium's sandbox
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2600 \
    --screenshot="$out/board.png" "file://$(cd "$out" && pwd)/board.html" >/dev/null 2>&1
echo "$out/board.png"
