#!/usr/bin/env bash
# Makes TorchSharp-cpu 0.107.0 load on hosts whose libstdc++ predates GCC 13 (Debian 12,
# Ubuntu 22.04), and lets its oneMKL pick kernels by CPU features on AMD processors. Called by MSBuild after every build/publish of a project whose output
# contains libLibTorchSharp.so. Idempotent; does nothing where the host's libstdc++ already
# exports GLIBCXX_3.4.32. Never touches the NuGet cache: the output copy is replaced by a
# patched copy (rename), so a hard-linked output never writes through to the cache.
# Why and how: docs/torchsharp-on-debian.md.
set -euo pipefail

out_dir="${1:?usage: apply.sh OUTPUT_DIR TOOLS_DIR}"
tools_dir="${2:?usage: apply.sh OUTPUT_DIR TOOLS_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lib="$out_dir/libLibTorchSharp.so"
needed="GLIBCXX_3.4.32"

[[ -f "$lib" ]] || exit 0

# 1. MKL CPU dispatch (x86-64 only): build libmkl-cpu-dispatch.so beside libtorch so oneMKL picks
#    its kernels by CPU features, not vendor. Without gcc the build says so and goes on: torch
#    still works, with MKL's slower generic path on AMD processors.
if [[ "$(uname -m)" == x86_64 ]]; then
  dispatch="$tools_dir/libmkl-cpu-dispatch.so"
  if [[ ! -f "$dispatch" || "$here/mkl-cpu-dispatch.c" -nt "$dispatch" ]]; then
    if command -v gcc >/dev/null; then
      mkdir -p "$tools_dir"
      gcc -O2 -Wall -Werror -shared -fPIC -o "$dispatch" "$here/mkl-cpu-dispatch.c"
    else
      echo "apply.sh: warning: gcc not found; libmkl-cpu-dispatch.so not built, so MKL uses its generic kernels on AMD CPUs (apt-get install gcc; docs/torchsharp-on-debian.md)" >&2
    fi
  fi
  if [[ -f "$dispatch" ]]; then
    cmp -s "$dispatch" "$out_dir/libmkl-cpu-dispatch.so" 2>/dev/null || cp "$dispatch" "$out_dir/libmkl-cpu-dispatch.so"
  fi
fi

# 2. libstdc++: only where the host's runtime predates GCC 13.

host_libstdcxx="$(/sbin/ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 \(libc6,x86-64\)/ {print $NF; exit}')"
if [[ -n "$host_libstdcxx" ]] && grep -qa "$needed" "$host_libstdcxx"; then
  # A new enough C++ runtime: no patch. Remove a shim left by an earlier build on another host.
  rm -f "$out_dir/libglibcxx-shim.so"
  exit 0
fi

mkdir -p "$tools_dir"
weaken="$tools_dir/weaken-verneed"
shim="$tools_dir/libglibcxx-shim.so"
if [[ ! -x "$weaken" || "$here/weaken-verneed.c" -nt "$weaken" ]]; then
  command -v gcc >/dev/null || { echo "apply.sh: error: gcc is needed to make TorchSharp load on this host (apt-get install gcc g++)" >&2; exit 1; }
  gcc -O2 -Wall -Werror -o "$weaken" "$here/weaken-verneed.c"
fi
if [[ ! -f "$shim" || "$here/glibcxx-shim.cpp" -nt "$shim" || "$here/glibcxx-shim.map" -nt "$shim" ]]; then
  command -v g++ >/dev/null || { echo "apply.sh: error: g++ is needed to make TorchSharp load on this host (apt-get install g++)" >&2; exit 1; }
  g++ -O2 -shared -fPIC -Wl,--version-script="$here/glibcxx-shim.map" -o "$shim" "$here/glibcxx-shim.cpp"
fi
cmp -s "$shim" "$out_dir/libglibcxx-shim.so" 2>/dev/null || cp "$shim" "$out_dir/libglibcxx-shim.so"

# Patch a private copy and rename it over the output file (breaks any hard link to the cache).
# The copy keeps the original's timestamp so MSBuild's incremental copy leaves it alone.
tmp="$lib.patching.$$"
cp "$lib" "$tmp"
set +e
"$weaken" "$tmp" "$needed"
rc=$?
set -e
case "$rc" in
  0) touch -r "$lib" "$tmp"; mv -f "$tmp" "$lib"; echo "apply.sh: $lib: marked $needed weak (host libstdc++ lacks it)";;
  3) rm -f "$tmp";;   # already patched
  4) rm -f "$tmp";;   # this TorchSharp build does not need the version: nothing to do
  *) rm -f "$tmp"; echo "apply.sh: error: could not patch $lib" >&2; exit 1;;
esac
