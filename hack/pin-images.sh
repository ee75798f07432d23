#!/usr/bin/env bash
# Pins the Dockerfile's base images by digest: every `ARG *_IMAGE=name:tag` without a digest
# becomes `name:tag@sha256:...`, the digest of the tag's manifest list as the registry serves
# it now. Needs registry access and `docker buildx` (or `crane`); run it where both exist (a
# developer machine, GitHub Actions) and commit the result. Re-run to move to newer patches.
#   hack/pin-images.sh [Dockerfile]
set -euo pipefail

file=${1:-"$(dirname "$0")/../Dockerfile"}

digest() {
    if command -v crane >/dev/null; then
        crane digest "$1"
    else
        docker buildx imagetools inspect "$1" --format '{{json .Manifest}}' |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'
    fi
}

changed=0
while IFS= read -r line; do
    ref=${line#*=}
    case "$ref" in
        *@sha256:*) continue ;;
    esac
    sum=$(digest "$ref")
    case "$sum" in
        sha256:*) ;;
        *) echo "no digest for $ref: '$sum'" >&2; exit 1 ;;
    esac
    name=${line%%=*}
    sed -i "s|^${name}=.*|${name}=${ref}@${sum}|" "$file"
    echo "${name#ARG } -> ${ref}@${sum}"
    changed=1
done < <(grep -E '^ARG [A-Z_]+_IMAGE=' "$file")

[ "$changed" = 1 ] || echo "every base image in $file is already pinned"
