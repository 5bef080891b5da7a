#!/usr/bin/env bash
# Configure, build and install the Slicer scripted module of a checkout with Slicer's and CTK's real CMake
# macros (cmake/, see README.md), then print every installed file, relative to the extension's install
# prefix, one per line. This is the tree an installed extension has on a user's machine.
# Usage: install-tree.sh [REPO_ROOT] [SLICER_MAJOR.MINOR]      (defaults: the current directory, 5.8)
# Exit status: 0 installed (the list is on stdout), 1 configure/build/install failed (the log is on stderr).
# INSTALL_TREE_KEEP=DIR: also copy the installed tree to DIR (Testing/Python/slicer_module/test_extension_install.py
# imports the module from it); without it the tree is deleted, as in the original script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "${1:-.}" && pwd)
ver=${2:-5.8}
module_dir="$repo/MedDDPMSynth"
[ -f "$module_dir/CMakeLists.txt" ] || { echo "no $module_dir/CMakeLists.txt" >&2; exit 1; }
command -v cmake >/dev/null || { echo "cmake not found (apt-get install cmake, or pip install cmake)" >&2; exit 1; }
py=$(command -v python3)
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/build" "$work/install"
cat > "$work/src/CMakeLists.txt" <<CML
cmake_minimum_required(VERSION 3.16)
project(ExtensionInstallCheck NONE)
set(CTK_CMAKE_DIR "$here/cmake")
include("$here/cmake/ctkFunctionExtractOptimizedLibrary.cmake")
include("$here/cmake/ctkMacroCompilePythonScript.cmake")
include("$here/cmake/SlicerMacroBuildScriptedModule.cmake")
# the values UseSlicer.cmake gives an extension on Linux and Windows (macOS: the same tree inside the app bundle)
set(Slicer_USE_PYTHONQT ON)
set(BUILD_TESTING OFF)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-$ver/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ./lib/Slicer-$ver/qt-scripted-modules)
set(PYTHON_EXECUTABLE "$py")
set(PYTHON_INCLUDE_DIR "$pyinc")
find_library(PYTHON_LIBRARY NAMES python$pyver)
set(PYTHONINTERP_FOUND TRUE)
set(PYTHONLIBS_FOUND TRUE)
set(PYTHON_LIBRARIES \${PYTHON_LIBRARY})
add_subdirectory("$module_dir" "\${CMAKE_BINARY_DIR}/MedDDPMSynth")
CML
log="$work/log"
if ! { cmake -S "$work/src" -B "$work/build" -DCMAKE_INSTALL_PREFIX="$work/install" \
       && cmake --build "$work/build" && cmake --install "$work/build"; } >"$log" 2>&1; then
  cat "$log" >&2; exit 1
fi
(cd "$work/install" && find . -type f | sed 's|^\./||' | sort)
if [ -n "${INSTALL_TREE_KEEP:-}" ]; then mkdir -p "$INSTALL_TREE_KEEP" && cp -R "$work/install/." "$INSTALL_TREE_KEEP/"; fi
