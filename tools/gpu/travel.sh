#!/usr/bin/env bash
# What a call to the GPU machine sends is this checkout's tracked and untracked-not-ignored files plus
# the ignored paths it names in `carry`, 64 MiB at most together (../.library/device/README.md). The
# tracked files alone are about 160 MB (models/target is 94 MB), so no call could start. `light`, run
# here before the calls, empties git's index (the files on disk stay) and ignores every path at the
# root in .git/info/exclude: a call then sends only what it carries (.gpu, then .gpu-family; docs/gpu.md).
# `back`, run after the calls, restores both: the index as HEAD has it, the exclude file as it was.
# `light` refuses while changes are staged (`back` resets the index to HEAD, which would drop them).
# Until `back`, git status shows every file as deleted and untracked: commit nothing in between.
# Usage: bash tools/gpu/travel.sh light|back
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
mark='# tools/gpu/travel.sh light: every path at the root ignored until `travel.sh back`'
case ${1:-} in
  light)
    git diff --cached --quiet || { echo "travel.sh: changes are staged; commit or unstage them first" >&2; exit 1; }
    if ! grep -qxF "$mark" "$exclude" 2>/dev/null; then printf '%s\n/*\n' "$mark" >> "$exclude"; fi
    git rm -r -q --cached .
    echo "travel.sh: git's index is empty and every path is ignored: a device call sends only what it carries."
    echo "travel.sh: run 'bash tools/gpu/travel.sh back' after the calls, and commit nothing before it." ;;
  back)
    if grep -qxF "$mark" "$exclude" 2>/dev/null; then
      awk -v m="$mark" '$0 == m { skip = 1; next } skip && $0 == "/*" { skip = 0; next } { skip = 0; print }' "$exclude" > "$exclude.tmp" && mv "$exclude.tmp" "$exclude"
    fi
    git reset -q
    echo "travel.sh: the index is HEAD's again ($(git status --short | wc -l) paths differ from it, as before light)." ;;
  *) echo "usage: bash tools/gpu/travel.sh light|back" >&2; exit 2 ;;
esac
