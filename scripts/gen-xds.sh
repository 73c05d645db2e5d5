#!/usr/bin/env bash
# Regenerate xds/gen/ (protobuf-es TypeScript for Envoy's v3 xDS API) from the vendored protos in
# xds/proto/. Runs offline: local inputs and the local protoc-gen-es plugin from node_modules.
#
#   scripts/gen-xds.sh            generate from xds/proto/ (the normal case)
#   scripts/gen-xds.sh --vendor   first re-copy the needed .proto subset into xds/proto/ from the
#                                 pinned source (@grpc/grpc-js-xds PINNED_VERSION's deps/ folder)
#
# The roots below are what xds/ uses; their imports are followed transitively, so xds/proto/
# holds exactly the roots and their dependencies (google/protobuf/* come with buf itself).
set -euo pipefail
cd "$(dirname "$0")/.."

PINNED_VERSION="1.14.1"
SOURCE="node_modules/@grpc/grpc-js-xds"
PROTO_DIR="xds/proto"
GEN_DIR="xds/gen"
ROOTS=(
  envoy/service/discovery/v3/ads.proto
  envoy/service/discovery/v3/discovery.proto
  envoy/service/listener/v3/lds.proto
  envoy/service/route/v3/rds.proto
  envoy/service/cluster/v3/cds.proto
  envoy/service/endpoint/v3/eds.proto
  envoy/service/secret/v3/sds.proto
  envoy/service/status/v3/csds.proto
  envoy/config/listener/v3/listener.proto
  envoy/config/route/v3/route.proto
  envoy/config/cluster/v3/cluster.proto
  envoy/config/endpoint/v3/endpoint.proto
  envoy/extensions/transport_sockets/tls/v3/tls.proto
  envoy/extensions/transport_sockets/tls/v3/secret.proto
  envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto
  envoy/extensions/filters/http/router/v3/router.proto
  envoy/extensions/filters/http/rbac/v3/rbac.proto
  envoy/extensions/filters/http/jwt_authn/v3/config.proto
  envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol.proto
)
# Where each top-level folder lives inside the source package's deps/, and its licence.
declare -A DEP_OF=([envoy]=envoy-api [xds]=xds [udpa]=xds [validate]=protoc-gen-validate [google]=googleapis)

vendor() {
  local have
  have=$(node -p "require('./$SOURCE/package.json').version")
  if [[ "$have" != "$PINNED_VERSION" ]]; then
    echo "gen-xds: $SOURCE is $have, pinned $PINNED_VERSION; update PINNED_VERSION deliberately" >&2
    exit 1
  fi
  rm -rf "$PROTO_DIR"
  mkdir -p "$PROTO_DIR"
  local -a queue=("${ROOTS[@]}")
  declare -A seen=()
  while ((${#queue[@]} > 0)); do
    local file="${queue[0]}"
    queue=("${queue[@]:1}")
    [[ -n "${seen[$file]:-}" ]] && continue
    seen[$file]=1
    [[ "$file" == google/protobuf/* ]] && continue
    local top="${file%%/*}"
    local src="$SOURCE/deps/${DEP_OF[$top]}/$file"
    if [[ ! -f "$src" ]]; then
      echo "gen-xds: missing $src" >&2
      exit 1
    fi
    mkdir -p "$PROTO_DIR/$(dirname "$file")"
    cp "$src" "$PROTO_DIR/$file"
    while IFS= read -r dep; do queue+=("$dep"); done < <(sed -n 's/^import \(public \)\{0,1\}"\([^"]*\)";.*/\2/p' "$src")
  done
  # The pinned package ships an older protoc-gen-validate than its Envoy tree expects: StringRules
  # has no `ignore_empty`. PGV options are annotations only (nothing here evaluates them, see
  # research/xds.md T3), so drop that one option key rather than mix sources.
  grep -rl 'ignore_empty: true' "$PROTO_DIR/envoy" | while IFS= read -r f; do
    sed -i 's/ ignore_empty: true}/}/' "$f"
  done
  # Every source is Apache-2.0; keep its licence text next to the copied files.
  for top in envoy xds udpa validate google; do
    [[ -d "$PROTO_DIR/$top" ]] && cp "node_modules/@grpc/grpc-js/LICENSE" "$PROTO_DIR/$top/LICENSE"
  done
  cat > "$PROTO_DIR/SOURCE.md" <<EOF
# Vendored protobuf sources (do not edit)

Copied by \`scripts/gen-xds.sh --vendor\` from \`@grpc/grpc-js-xds@$PINNED_VERSION\` (\`deps/\`), which
ships these upstream trees, all under the Apache License 2.0 (LICENSE in each folder):

- \`envoy/\`: envoyproxy/envoy \`api/\` (data-plane-api)
- \`xds/\`, \`udpa/\`: cncf/xds
- \`validate/\`: bufbuild/protoc-gen-validate
- \`google/api\`, \`google/rpc\`: googleapis/googleapis

Only the roots listed in the script and their transitive imports are kept. One patch: the
\`ignore_empty: true\` key is removed from PGV string rules in \`envoy/config/core/v3/protocol.proto\`
(the shipped validate.proto predates it; PGV options are annotations we do not evaluate).
EOF
  echo "gen-xds: vendored ${#seen[@]} files into $PROTO_DIR"
}

if [[ "${1:-}" == "--vendor" ]]; then vendor; fi

# scripts/gen-proto.sh: buf with the local protoc-gen-es; nothing is fetched (no remote plugins or deps).
"$(dirname "$0")/gen-proto.sh" "$PROTO_DIR" "$GEN_DIR"
