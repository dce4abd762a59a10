#!/usr/bin/env bash
# What a call to the GPU machine sends is this checkout's tracked and untracked-not-ignored files plus
# the ignored paths it names in `carry`, 64 MiB at most together (../.library/device/README.md). The
# tracked files alone are about 160 MB (models/target is 94 MB), so no call could start.
#   light  (here, before the calls) saves git's index and .git/info/exclude, then empties the index
#          (the files on disk stay) and ignores every path at the root: a call sends only what it
#          carries (.gpu, then .gpu-family; docs/gpu.md, Measuring on a GPU). Refused when already light.
#   back   (here, after the calls) puts the saved index and exclude file back as they were, staged
#          changes included. Refused when light was not run.
# Until `back`, git status shows every file as deleted and untracked: commit nothing in between. The
# exclude file is shared by every worktree of the repository: new files there are hidden too.
# Usage: bash tools/gpu/travel.sh light|back
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
index=$(git rev-parse --git-path index)
exclude=$(git rev-parse --git-path info/exclude)
saved=$(git rev-parse --git-path travel-light)   # the saved index and exclude file
case ${1:-} in
  light)
    if [ -e "$saved" ]; then echo "travel.sh: already light (since $(date -r "$saved")); run 'bash tools/gpu/travel.sh back' first" >&2; exit 1; fi
    mkdir -p "$saved" "$(dirname "$exclude")"
    cp -p "$index" "$saved/index"
    if [ -e "$exclude" ]; then cp -p "$exclude" "$saved/exclude"; fi
    printf '\n/*\n' >> "$exclude"
    git rm -r -q --cached .
    echo "travel.sh: git's index is empty and every path is ignored: a device call sends only what it carries."
    echo "travel.sh: run 'bash tools/gpu/travel.sh back' after the calls, and commit nothing before it." ;;
  back)
    if [ ! -e "$saved/index" ]; then echo "travel.sh: not light (no $saved): nothing to put back" >&2; exit 1; fi
    cp -p "$saved/index" "$index"
    if [ -e "$saved/exclude" ]; then cp -p "$saved/exclude" "$exclude"; else rm -f "$exclude"; fi
    rm -rf "$saved"
    echo "travel.sh: the index and $exclude are as they were before light." ;;
  *) echo "usage: bash tools/gpu/travel.sh light|back" >&2; exit 2 ;;
esac
