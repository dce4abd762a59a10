#!/usr/bin/env bash
# What a call to the GPU machine sends is this checkout's tracked and untracked-not-ignored files plus
# the ignored paths it names in `carry`, 64 MiB at most together (../.library/device/README.md). The
# tracked files alone are about 160 MB (models/target is 94 MB), so no call could start.
#   light  (here, before the calls) saves git's index, then empties it (the files on disk stay) and
#          appends a line ignoring every path at the root to .git/info/exclude: a call sends only what
#          it carries (.gpu, then .gpu-family; docs/gpu.md, Measuring on a GPU). Refused when already
#          light, and in a repository with several worktrees (they share the exclude file).
#   back   (here, after the calls) puts the saved index back, staged changes included, and takes the
#          appended lines off the exclude file (its other lines stay as they are). Refused when not light.
# Until `back`, git status shows every file as deleted and untracked: commit nothing in between.
# Usage: bash tools/gpu/travel.sh light|back
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
index=$(git rev-parse --git-path index)
exclude=$(git rev-parse --git-path info/exclude)
saved=$(git rev-parse --git-path travel-light)   # the saved index, and what light appended to the exclude file
added=$'\n# tools/gpu/travel.sh light: every path ignored until `travel.sh back`\n/*\n'
case ${1:-} in
  light)
    if [ -e "$saved" ]; then echo "travel.sh: already light (since $(date -r "$saved")); run 'bash tools/gpu/travel.sh back' first" >&2; exit 1; fi
    if [ "$(git worktree list | wc -l)" -gt 1 ]; then echo "travel.sh: this repository has several worktrees, which share $exclude; run it where there is one" >&2; exit 1; fi
    # everything saved first, then moved into place in one step: an interrupted light changed nothing
    tmp=$(mktemp -d "$(dirname "$saved")/travel-light.XXXXXX")
    cp -p "$index" "$tmp/index"
    printf '%s' "$added" > "$tmp/added"
    mv "$tmp" "$saved"
    mkdir -p "$(dirname "$exclude")"
    printf '%s' "$added" >> "$exclude"
    git rm -r -q --cached .
    echo "travel.sh: git's index is empty and every path is ignored: a device call sends only what it carries."
    echo "travel.sh: run 'bash tools/gpu/travel.sh back' after the calls, and commit nothing before it." ;;
  back)
    if [ ! -e "$saved/index" ]; then echo "travel.sh: not light (no $saved): nothing to put back" >&2; exit 1; fi
    rm -f "$index.lock"   # left by a git rm that was interrupted
    cp -p "$saved/index" "$index"
    size=$(wc -c < "$saved/added")
    if [ -e "$exclude" ] && [ "$(tail -c "$size" "$exclude")" = "$(cat "$saved/added")" ]; then
      truncate -s "-$size" "$exclude"
    else
      echo "travel.sh: $exclude no longer ends with the lines light added; remove its '/*' line by hand" >&2
    fi
    rm -rf "$saved"
    echo "travel.sh: the index is as it was before light, and $exclude ignores what it did." ;;
  *) echo "usage: bash tools/gpu/travel.sh light|back" >&2; exit 2 ;;
esac
