#!/usr/bin/env bash
# One-command install of the edge agent on a Debian gateway. Idempotent: run it again to update.
#
#   bash install.sh            system packages + .venv with the agent
#   bash install.sh --dev      the same, plus the test tools
#   bash install.sh --systemd  the same, plus the service (needs root): builds the Debian package
#                              (packaging/build-deb) and installs it, as a fleet gateway gets it
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
dev=0
systemd=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --systemd) systemd=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# -- system packages: Python with venv, Mosquitto (the local broker of the demo and the tests),
#    socat (serial pty pairs for the RTU simulators), openssl. Only what is missing is installed.
missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null || [ -x /usr/bin/mosquitto_passwd ] || missing+=(mosquitto)
command -v socat >/dev/null || missing+=(socat)
command -v openssl >/dev/null || missing+=(openssl)   # TLS material for the tests and for gateways
# The simulated intersection camera: rendered frames served by GStreamer's RTSP server (Debian's
# python3-gi with /usr/bin/python3), Chinese plate text drawn with a CJK font.
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
  2>/dev/null && command -v gst-launch-1.0 >/dev/null \
  || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
               gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-rtsp)
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing+=(fonts-wqy-zenhei)
# The test suite also runs the signal-controller client against an SNMP agent nobody here wrote.
[ "$dev" -eq 1 ] && [ ! -x /usr/sbin/snmpd ] && missing+=(snmpd)
# ...and the real detector against real footage: Debian's OpenCV sample data (vtest.avi: people on
# a campus road), test data only: the agent never reads it.
[ "$dev" -eq 1 ] && [ ! -e /usr/share/doc/opencv-doc/examples/data/vtest.avi ] && missing+=(opencv-doc)
# The Debian package is built on Debian's Python 3.11 (--systemd, and the package tests)...
if [ "$dev" -eq 1 ] || [ "$systemd" -eq 1 ]; then
  /usr/bin/python3.11 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3.11 python3.11-venv)
fi
# ...which install it into a scratch copy of this machine and run its service as systemd would:
# its maintainer scripts (adduser), systemd-analyze verify, bwrap for the unit's limits.
if [ "$dev" -eq 1 ]; then
  command -v adduser >/dev/null || missing+=(adduser)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v bwrap >/dev/null || missing+=(bubblewrap)
  # the web console's browser tests: Debian's headless Chromium and its WebDriver
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
fi
if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "install.sh: Python 3.11 or newer is needed (found $(python3 --version))" >&2; exit 1; }

# -- the virtualenv with the agent
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
extras=""; [ "$dev" -eq 1 ] && extras="[test]"
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)$extras"
if [ ! -e "$stamp" ]; then
  say "installing the agent into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$here$extras"
  rm -f "$venv"/.installed-*; touch "$stamp"
fi

# -- optional: the service, from the Debian package: the same files, user and unit as a gateway
#    provisioned from packages gets, and nothing of this clone (which may be in a home directory,
#    hidden from the service by ProtectHome=)
if [ "$systemd" -eq 1 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "install.sh --systemd must run as root" >&2; exit 1; }
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  say "building the Debian package (packaging/build-deb)"
  deb="$("$here/packaging/build-deb" --out "$build" | tail -n 1)"
  chmod 0755 "$build"   # apt reads it as its own user
  say "installing $(basename "$deb"): the agent in /opt/edge-agent, config /etc/edge-agent, state /var/lib/edge-agent"
  # apt pulls what it depends on; --reinstall: a rebuilt clone of the same version replaces it;
  # --force-confold keeps a config edited here before
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall -o Dpkg::Options::=--force-confold "$deb"
  say "next: sudoedit /etc/edge-agent/config.yaml; sudo -u edge-agent edge-agent check-config /etc/edge-agent/config.yaml; sudo systemctl restart edge-agent"
fi
say "done: $venv/bin/edge-agent"
