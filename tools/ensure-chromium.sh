#!/bin/sh
# The real-browser test drives Debian's chromium (never a browser that Playwright downloads).
# As root (a container, CI), install it when it is missing; as anyone else, only say how: the
# browser tests then skip with that reason, except under CI=1, where they fail.
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: /usr/bin/chromium is missing; 'sudo apt-get install chromium' enables the browser tests" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
