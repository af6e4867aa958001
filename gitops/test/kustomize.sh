#!/usr/bin/env bash
# Builds every kustomization under gitops/ and checks what the model overlays produce.
#
#   gitops/test/kustomize.sh
#
# Uses `kubectl kustomize` when kubectl is on PATH; otherwise (or with
# TAIMATSU_KUSTOMIZE=binary) kustomize $KUSTOMIZE_VERSION built once from its Go module
# into .cache/bin/ with the machine's Go toolchain, like the rest of hack/.
#
# Checks, for each gitops/models/overlays/<env>:
#   - it builds, and contains at least one ModelDeployment;
#   - every Model and ModelDeployment is in the overlay's namespace, which the overlay
#     also creates;
#   - every ModelDeployment with restricted egress names allowedCidrs (otherwise its
#     fetch step cannot reach the model mirror);
#   - production records full audit with at least one redaction pattern.
# And that gitops/models/base/ still holds exact copies of examples/quickstart/.
source "$(dirname "${BASH_SOURCE[0]}")/../../hack/lib.sh"
cd "$REPO_ROOT"

KUSTOMIZE_VERSION=v5.7.1

if [ "${TAIMATSU_KUSTOMIZE:-}" != binary ] && command -v kubectl >/dev/null; then
  build() { kubectl kustomize "$1"; }
  log "using kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize || echo 'version unknown'))"
else
  KUSTOMIZE="$CACHE_DIR/bin/kustomize"
  if ! { [ -x "$KUSTOMIZE" ] && "$KUSTOMIZE" version 2>/dev/null | grep -qx "$KUSTOMIZE_VERSION"; }; then
    command -v go >/dev/null || { log "neither kubectl nor Go (to build kustomize) is installed"; exit 1; }
    log "building kustomize $KUSTOMIZE_VERSION into $CACHE_DIR/bin (once)"
    GOBIN="$CACHE_DIR/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  fi
  build() { "$KUSTOMIZE" build "$1"; }
  log "using $KUSTOMIZE ($("$KUSTOMIZE" version))"
fi

failures=0
fail() { log "FAIL: $*"; failures=$((failures + 1)); }

# One line per object in a multi-document YAML stream as kustomize prints it (keys sorted,
# two-space indentation), tab-separated:
#   kind name namespace replicas audit-level redact-pattern-count egress-mode cidr-count
summarise() {
  awk '
    function emit() {
      if (kind != "") printf "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\n", kind, name, ns, replicas, level, redact, mode, cidrs
      kind = name = ns = replicas = level = mode = section = list = ""; redact = cidrs = 0
    }
    /^---$/ { emit(); next }
    /^[^ #]/ { section = $1; list = "" }
    /^kind: / { kind = $2 }
    section == "metadata:" && /^  name: /      { name = $2 }
    section == "metadata:" && /^  namespace: / { ns = $2 }
    section == "spec:" && /^  [a-zA-Z]/        { sub_ = $1; list = "" }
    section == "spec:" && /^  replicas: /      { replicas = $2 }
    section == "spec:" && sub_ == "audit:"  && /^    level: /          { level = $2 }
    section == "spec:" && sub_ == "audit:"  && /^    redactPatterns:/  { list = "redact"; next }
    section == "spec:" && sub_ == "access:" && /^      mode: /         { mode = $2 }
    section == "spec:" && sub_ == "access:" && /^      allowedCidrs:/  { list = "cidrs"; next }
    list == "redact" && /^    - /   { redact++; next }
    list == "cidrs"  && /^      - / { cidrs++; next }
    /^ *[a-zA-Z]+:/ { list = "" }
    END { emit() }
  '
}

# 1. The base is the quickstart, byte for byte.
for f in model.yaml deployment.yaml; do
  if cmp -s "examples/quickstart/$f" "gitops/models/base/$f"; then
    log "ok   gitops/models/base/$f is examples/quickstart/$f"
  else
    fail "gitops/models/base/$f differs from examples/quickstart/$f: cp examples/quickstart/$f gitops/models/base/$f"
  fi
done

# 2. Every kustomization under gitops/ builds.
while IFS= read -r file; do
  dir=$(dirname "$file")
  if out=$(build "$dir" 2>&1); then
    log "ok   $dir builds ($(grep -c '^kind: ' <<<"$out") objects)"
  else
    fail "$dir does not build: $out"
  fi
done < <(find gitops -name kustomization.yaml | sort)

# 3. The model overlays.
overlays=(gitops/models/overlays/*/)
[ -d "${overlays[0]}" ] || fail "no overlays under gitops/models/overlays"
for dir in "${overlays[@]}"; do
  dir=${dir%/}
  env=$(basename "$dir")
  ns=$(awk '/^namespace: / { print $2 }' "$dir/kustomization.yaml")
  [ -n "$ns" ] || { fail "$dir/kustomization.yaml sets no namespace"; continue; }
  out=$(build "$dir" 2>&1) || continue  # reported above
  summary=$(summarise <<<"$out")
  deployments=$(awk -F'\t' '$1 == "ModelDeployment"' <<<"$summary")
  if [ -z "$deployments" ]; then
    fail "$env: no ModelDeployment in the build"
    continue
  fi
  awk -F'\t' -v ns="$ns" '$1 == "Namespace" && $2 == ns { found = 1 } END { exit !found }' <<<"$summary" \
    || fail "$env: does not create its namespace $ns"
  while IFS=$'\t' read -r kind name namespace replicas level redact mode cidrs; do
    case "$kind" in Model | ModelDeployment) ;; *) continue ;; esac
    [ "$namespace" = "$ns" ] || fail "$env: $kind $name is in namespace '${namespace:-<none>}', expected $ns"
    [ "$kind" = ModelDeployment ] || continue
    if [ "${mode:-Restricted}" = Restricted ] && [ "$cidrs" -eq 0 ]; then
      fail "$env: ModelDeployment $name restricts egress but lists no allowedCidrs for the model mirror"
    fi
    if [ "$env" = production ] && { [ "$level" != full ] || [ "$redact" -eq 0 ]; }; then
      fail "$env: ModelDeployment $name must record audit level full with redactPatterns (has level '${level:-metadata}', $redact patterns)"
    fi
    log "ok   $env: ModelDeployment $name in $namespace, replicas ${replicas:-1}, audit ${level:-metadata} ($redact redaction patterns), egress ${mode:-Restricted} to $cidrs range(s)"
  done <<<"$summary"
done

if [ "$failures" -ne 0 ]; then
  log "$failures check(s) failed"
  exit 1
fi
log "all kustomizations build; overlays: ${overlays[*]}"
