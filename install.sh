#!/usr/bin/env bash
# One-command install of the edge agent on a Debian gateway. Idempotent: run it again to update.
#
#   bash install.sh            system packages + .venv with the agent
#   bash install.sh --dev      the same, plus the test tools
#   bash install.sh --systemd  the same, plus a hardened systemd service (needs root):
#                              user edge-agent, config /etc/edge-agent, state /var/lib/edge-agent
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
dev=0
systemd=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --systemd) systemd=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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

# -- optional: the systemd service
if [ "$systemd" -eq 1 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "install.sh --systemd must run as root" >&2; exit 1; }
  id edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
  # serial adapters belong to group dialout
  getent group dialout >/dev/null && usermod -a -G dialout edge-agent
  install -d -o edge-agent -g edge-agent -m 0750 /var/lib/edge-agent
  install -d -o root -g edge-agent -m 0750 /etc/edge-agent
  if [ ! -e /etc/edge-agent/config.yaml ]; then
    install -o root -g edge-agent -m 0640 "$here/config/example.yaml" /etc/edge-agent/config.yaml
    say "wrote /etc/edge-agent/config.yaml from the example: edit it, then 'edge-agent check-config /etc/edge-agent/config.yaml'"
  fi
  sed "s#@VENV@#$venv#g" "$here/config/edge-agent.service" > /etc/systemd/system/edge-agent.service
  ln -sf "$venv/bin/edge-agent" /usr/local/bin/edge-agent
  systemctl daemon-reload
  if "$venv/bin/edge-agent" check-config /etc/edge-agent/config.yaml; then
    systemctl enable --now edge-agent
    say "edge-agent service enabled and started: 'systemctl status edge-agent', 'edge-agent status'"
  else
    say "service installed but NOT started: fix the config above, then 'systemctl enable --now edge-agent'"
  fi
fi
say "done: $venv/bin/edge-agent"
