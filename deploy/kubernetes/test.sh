#!/usr/bin/env bash
# Renders deploy/kubernetes with `kubectl kustomize` and validates every object offline
# against the Kubernetes API types (kubernetes-models, pinned in validate/package-lock.json:
# its JSON schemas, plus unknown fields from its type declarations), then proves the check
# can fail: a misspelt field and a wrongly typed one must be refused. SKIP (exit 0)
# without kubectl or node/npm.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for t in kubectl node npm; do
  command -v "$t" >/dev/null || { echo "kubernetes test: SKIP: no $t"; exit 0; }
done
if [[ ! -d $here/validate/node_modules/kubernetes-models ]]; then
  (cd "$here/validate" && npm ci --no-audit --no-fund --silent) ||
    { echo "kubernetes test: SKIP: npm ci failed (no registry?)"; exit 0; }
fi
rendered=$(kubectl kustomize "$here")
node "$here/validate/validate.mjs" <<<"$rendered"
kinds=$(grep -c '^kind:' <<<"$rendered")
[[ $kinds -eq 4 ]] || { echo "kubernetes test: FAIL: $kinds objects rendered, expected 4" >&2; exit 1; }
grep -q 'hostIPC: false' <<<"$rendered" || { echo "kubernetes test: FAIL: hostIPC not off" >&2; exit 1; }
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesytem: true/' <<<"$rendered" |
  node "$here/validate/validate.mjs" --expect-invalid >/dev/null 2>&1 ||
  { echo "kubernetes test: FAIL: a misspelt field passed" >&2; exit 1; }
sed 's/cpu: "4"/cpu: [4]/' <<<"$rendered" | node "$here/validate/validate.mjs" --expect-invalid >/dev/null 2>&1 ||
  { echo "kubernetes test: FAIL: a wrongly typed field passed" >&2; exit 1; }
echo "kubernetes test: PASS ($kinds objects)"
