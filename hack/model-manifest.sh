#!/usr/bin/env bash
# Prints the `files:` manifest of a Model for every file under DIR (path, size,
# sha256), ready to paste into spec.files. Run it on the mirror that holds the
# weights, so the manifest pins exactly what will be served.
#   hack/model-manifest.sh /srv/models/Qwen2.5-7B-Instruct-AWQ
set -euo pipefail
dir="${1:?usage: $0 MODEL_DIR}"
[ -d "$dir" ] || { echo "$0: $dir is not a directory" >&2; exit 2; }
cd "$dir"
echo "files:"
find . -type f ! -path './.git/*' -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do
  size=$(stat -c %s -- "$f")
  sum=$(sha256sum -- "$f" | cut -d' ' -f1)
  printf -- '- path: %s\n  size: %s\n  sha256: %s\n' "$f" "$size" "$sum"
done
