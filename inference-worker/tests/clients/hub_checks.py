"""The official huggingface_hub client against the test's Hub mirror (HF_ENDPOINT).

Downloads a snapshot of a repository at `main` into a fresh cache, as `snapshot_download`
does against huggingface.co, and prints what it got as JSON: the commit it resolved (the
cache's snapshot directory), the sha256 of every file, and the cache's blob names (the
ETags it was given). Then asks for a revision the mirror does not have, which must raise
the client's RevisionNotFoundError.

usage: hub_checks.py REPO_ID CACHE_DIR
"""

import hashlib
import json
import os
import sys

from huggingface_hub import snapshot_download
from huggingface_hub.errors import RevisionNotFoundError

repo_id, cache_dir = sys.argv[1], sys.argv[2]
assert os.environ.get("HF_ENDPOINT"), "HF_ENDPOINT must point at the mirror"
assert not os.environ.get("HF_HUB_OFFLINE"), "the client must really ask the mirror"

snapshot = snapshot_download(repo_id=repo_id, revision="main", cache_dir=cache_dir)
files = {}
for root, _, names in os.walk(snapshot):
    for name in names:
        full = os.path.join(root, name)
        with open(full, "rb") as f:
            files[os.path.relpath(full, snapshot)] = hashlib.sha256(f.read()).hexdigest()
blobs_dir = os.path.join(os.path.dirname(os.path.dirname(snapshot)), "blobs")

try:
    snapshot_download(repo_id=repo_id, revision="no-such-branch", cache_dir=cache_dir)
    revision_error = None
except RevisionNotFoundError as e:
    revision_error = type(e).__name__

print(json.dumps({
    "commit": os.path.basename(snapshot),
    "files": files,
    "blobs": sorted(os.listdir(blobs_dir)),
    "revision_error": revision_error,
}))
