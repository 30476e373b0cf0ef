# Shared by scripts/demo and scripts/test: the Python side of the tests (moto_server, aws CLI)
# in .venv, installed on first use. Sourced, not run.

PW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PW_VENV="${PW_VENV:-$PW_ROOT/.venv}"
# Pinned: the versions FIELD-NOTES.md describes.
PW_PIP_PACKAGES=("moto[server]==5.2.5" "awscli==1.46.3")

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null || { echo "missing: $* (install them with your package manager)" >&2; return 1; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

ensure_venv() {
  if [ -x "$PW_VENV/bin/moto_server" ] && [ -x "$PW_VENV/bin/aws" ]; then return 0; fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  python3 -m venv "$PW_VENV"
  "$PW_VENV/bin/pip" install -q --disable-pip-version-check "${PW_PIP_PACKAGES[@]}"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_moto PORT LOG: starts moto_server on 127.0.0.1:PORT, waits until it answers (30 s at most).
start_moto() {
  local port=$1 log=$2
  "$PW_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto_server died; see $log" >&2; return 1; }
    sleep 0.1
  done
  echo "moto_server did not answer within 30 s; see $log" >&2
  return 1
}
