#!/usr/bin/env bash
# Tests the Argo CD health check for ModelDeployment (gitops/argocd/health-modeldeployment.lua).
#
#   gitops/test/argocd-health.sh                  every fixture, the argocd-cm copy, a self-check
#   gitops/test/argocd-health.sh --object FILE    one object (FILE or - for stdin): prints
#                                                 STATUS<TAB>MESSAGE, e.g. for live objects:
#     kubectl get modeldeployment NAME -o json | gitops/test/argocd-health.sh --object -
#
# Fixtures are gitops/test/fixtures/*.json, each with a sibling *.expected: first line the
# expected status, second line a substring the message must contain.
#
# The check runs under Lua 5.4 (Debian's lua5.4 and lua-cjson, installed here when missing)
# through run-health.lua, which reproduces the restrictions of Argo CD's Lua 5.1 sandbox.
CALLER_PWD=$PWD
source "$(dirname "${BASH_SOURCE[0]}")/../../hack/lib.sh"
cd "$REPO_ROOT"

HEALTH=gitops/argocd/health-modeldeployment.lua
CM_PATCH=gitops/argocd/argocd-cm-patch.yaml
CM_KEY=resource.customizations.health.taimatsu.dev_ModelDeployment
DRIVER=gitops/test/run-health.lua
FIXTURES=gitops/test/fixtures

ensure_apt lua5.4 lua-cjson
lua5.4 -e 'require("cjson")' 2>/dev/null \
  || { log "lua-cjson is installed but not loadable from lua5.4 (dpkg -L lua-cjson)"; exit 1; }

# Prints STATUS<TAB>MESSAGE for one object; the driver's exit status on failure.
health_of() { lua5.4 "$DRIVER" "$HEALTH" "$1"; }

if [ "${1:-}" = "--object" ]; then
  [ $# -eq 2 ] || { log "usage: $0 --object FILE.json|-"; exit 64; }
  case "$2" in
    - | /*) object="$2" ;;
    *) object="$CALLER_PWD/$2" ;;  # relative to where the script was called from
  esac
  health_of "$object"
  exit $?
fi
[ $# -eq 0 ] || { log "usage: $0 [--object FILE.json|-]"; exit 64; }

# The literal block under $CM_KEY in the argocd-cm patch, with its indentation removed:
# what a YAML parser gives for `key: |` (clip chomping: one final newline, trailing blank
# lines dropped). Fails when the key is missing.
embedded_copy() {
  awk -v key="  $CM_KEY: |" '
    $0 == key { inside = 1; next }
    !inside { next }
    /^[[:space:]]*$/ { blank = blank "\n"; next }
    {
      if (pad == "") { match($0, /^ +/); pad = substr($0, 1, RLENGTH) }
      if (pad == "" || substr($0, 1, length(pad)) != pad) exit
      printf "%s%s\n", blank, substr($0, length(pad) + 1); blank = ""; found = 1
    }
    END { if (!found) exit 1 }
  ' "$CM_PATCH"
}

failures=0
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# 1. argocd-cm carries exactly the tested script.
if ! embedded_copy >"$scratch/embedded.lua"; then
  fail "$CM_PATCH has no literal block '  $CM_KEY: |'"
elif ! cmp -s "$scratch/embedded.lua" "$HEALTH"; then
  fail "the copy of $HEALTH embedded in $CM_PATCH differs from the file (< embedded, > file):"
  diff "$scratch/embedded.lua" "$HEALTH" >&2 || true
else
  log "ok   $CM_PATCH embeds $HEALTH byte for byte"
fi
# A YAML parser, where one is installed, must read the same bytes (guards the awk above).
if python3 -c 'import yaml' 2>/dev/null; then
  if python3 - "$CM_PATCH" "$HEALTH" "$CM_KEY" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
sys.exit(0 if doc["data"][sys.argv[3]] == open(sys.argv[2], encoding="utf-8").read() else 1)
EOF
  then log "ok   PyYAML reads the same script from $CM_PATCH"
  else fail "PyYAML reads a different script from $CM_PATCH than $HEALTH"
  fi
fi

# Compares one fixture's health with its .expected; prints why on a mismatch.
check_fixture() {
  local json="$1" expected="$2" got want_status want_message status message
  if ! got=$(health_of "$json" 2>&1); then
    echo "the health check failed on it: $got"
    return 1
  fi
  want_status=$(sed -n 1p "$expected")
  want_message=$(sed -n 2p "$expected")
  status=${got%%$'\t'*}
  message=${got#*$'\t'}
  if [ -z "$want_status" ]; then
    echo "$expected has no status on its first line"
    return 1
  fi
  if [ "$status" != "$want_status" ]; then
    echo "status $status, expected $want_status (message: $message)"
    return 1
  fi
  if [[ "$message" != *"$want_message"* ]]; then
    echo "message \"$message\" does not contain \"$want_message\""
    return 1
  fi
  echo "$status: $message"
}

# 2. Every fixture gives its expected status and message.
shopt -s nullglob
fixtures=("$FIXTURES"/*.json)
[ ${#fixtures[@]} -gt 0 ] || fail "no fixtures in $FIXTURES"
for json in "${fixtures[@]}"; do
  expected="${json%.json}.expected"
  if [ ! -f "$expected" ]; then
    fail "$json has no $(basename "$expected")"
    continue
  fi
  if out=$(check_fixture "$json" "$expected"); then
    log "ok   $(basename "$json" .json): $out"
  else
    fail "$(basename "$json" .json): $out"
  fi
done
for expected in "$FIXTURES"/*.expected; do
  [ -f "${expected%.expected}.json" ] || fail "$expected has no fixture beside it"
done

# 3. The comparison itself can fail: a wrong status and a wrong message are both caught.
if [ ${#fixtures[@]} -gt 0 ]; then
  before=$failures
  wrong="$scratch/wrong.expected"
  printf 'Suspended\n\n' >"$wrong"
  check_fixture "${fixtures[0]}" "$wrong" >/dev/null && fail "a wrong expected status was not detected"
  { sed -n 1p "${fixtures[0]%.json}.expected"; echo "a message no health check writes"; } >"$wrong"
  check_fixture "${fixtures[0]}" "$wrong" >/dev/null && fail "a wrong expected message was not detected"
  [ "$failures" -ne "$before" ] || log "ok   wrong expectations are detected"
fi

if [ "$failures" -ne 0 ]; then
  log "$failures check(s) failed"
  exit 1
fi
log "all ${#fixtures[@]} fixtures match; the argocd-cm copy is identical"
