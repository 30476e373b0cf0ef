# Shared by scripts/demo and scripts/test: the Python side of the tests (moto_server, aws CLI)
# in .venv, installed on first use. Sourced, not run.

PW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PW_VENV="${PW_VENV:-$PW_ROOT/.venv}"
# Pinned: the versions FIELD-NOTES.md describes.
PW_PIP_PACKAGES=("moto[server]==5.2.5" "awscli==1.46.3")
# scripts/package: the packaged binary is linked by zig against this glibc (RHEL 8's).
PW_ZIG_PIP_PACKAGES=("cargo-zigbuild==0.24.1" "ziglang==0.15.2")
PW_GLIBC_FLOOR=2.28

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null || { echo "missing: $* (install them with your package manager)" >&2; return 1; }
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

venv_pip_install() {
  if [ ! -x "$PW_VENV/bin/pip" ]; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      apt_install python3 python3-venv
    fi
    python3 -m venv "$PW_VENV"
  fi
  "$PW_VENV/bin/pip" install -q --disable-pip-version-check "$@"
}

ensure_venv() {
  if [ -x "$PW_VENV/bin/moto_server" ] && [ -x "$PW_VENV/bin/aws" ]; then return 0; fi
  venv_pip_install "${PW_PIP_PACKAGES[@]}"
}

# cargo-zigbuild and zig (the ziglang wheel) in .venv, at the pinned versions. Run with
# .venv/bin first on PATH, cargo-zigbuild links with `.venv/bin/python3 -m ziglang` (its
# wrappers in ~/.cache/cargo-zigbuild say so), even when another zig is on PATH.
ensure_zigbuild() {
  local want_cz=${PW_ZIG_PIP_PACKAGES[0]#*==} want_zig=${PW_ZIG_PIP_PACKAGES[1]#*==}
  if [ "$("$PW_VENV/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $want_cz" ] ||
     [ "$("$PW_VENV/bin/python3" -m ziglang version 2>/dev/null)" != "$want_zig" ]; then
    venv_pip_install "${PW_ZIG_PIP_PACKAGES[@]}"
  fi
}

# glibc_needs FILE: the highest GLIBC_x.y symbol version FILE needs (its .gnu.version_r, read
# with readelf, so any architecture). Other GLIBC_ names (GLIBC_ABI_DT_RELR) are not versions.
glibc_needs() {
  readelf --version-info --wide "$1" | sed -n '/\.gnu\.version_r/,$p' |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -1 || true
}

# version_le A B: A <= B as dotted versions.
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_moto PORT LOG [strict]: starts moto_server on 127.0.0.1:PORT, waits until it answers
# (30 s at most). With "strict", through tests/moto_atomic.py: the test layer, which also serves
# a Lambda's Code.Location as AWS does.
start_moto() {
  local port=$1 log=$2
  if [ "${3:-}" = strict ]; then
    "$PW_VENV/bin/python" "$PW_ROOT/tests/moto_atomic.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  else
    "$PW_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  fi
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
