#!/usr/bin/env bash
# System packages the browser-front tests need (Testing/Python/web/test_web_browser.py), used by README.md's test
# command and so by .ci/run: Debian's chromium, which Playwright drives (it must not download a browser of its
# own), and Mesa's EGL with its software (llvmpipe) driver, with which the served trame-slicer views render
# off-screen when there is no GPU. Installs what is missing where it can (root, or password-less sudo, and
# apt-get); elsewhere it says what is missing and exits 0, and those tests skip with that reason
# (under CI=true they fail instead: CI must run them). Never fails the command it is part of.
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then
  libs=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null)
  grep -q 'libEGL.so.1 ' <<<"$libs" || missing+=(libegl1)
  grep -q 'libEGL_mesa.so.0 ' <<<"$libs" || missing+=(libegl-mesa0)
fi
compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null || compgen -G "/usr/lib/dri/swrast_dri.so" >/dev/null \
  || missing+=(libgl1-mesa-dri)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(unavailable)
fi
if [ "${sudo[0]:-}" != unavailable ] && command -v apt-get >/dev/null 2>&1; then
  echo "+ apt-get install ${missing[*]}"
  if "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "note: installing ${missing[*]} failed (see above)" >&2
fi
echo "note: ${missing[*]} not installed here (needs root and apt-get); the browser tests will skip." >&2
exit 0
