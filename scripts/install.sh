#!/usr/bin/env bash
# Installs everything crtforge needs on a Debian machine, idempotently:
# Debian packages (compilers, emulators) and a virtualenv at .venv with pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Compilers and emulators for every toolchain in toolchains/ and board in boards/; cmake and pkg-config for the
# package consumers in examples/, and Chromium for the report's browser check (tests/test_report.py).
APT_PACKAGES=(python3 python3-venv gcc libc6-dev binutils make
  gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-riscv64-linux-gnu libc6-dev-riscv64-cross qemu-user
  clang lld llvm libasan8 libubsan1 valgrind
  cmake pkgconf chromium)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stamp records which requirements the venv was built from, so a rerun skips pip.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "install: python packages into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
# The project on the venv's path, relative to it (a checkout moved with its .venv still works): doit loads its run
# command (doit.cfg) before it reads dodo.py.
.venv/bin/python -c 'import os, site; d = site.getsitepackages()[0]; open(d + "/crtforge.pth", "w").write(os.path.relpath(".", d) + "\n")'
