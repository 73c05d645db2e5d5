#!/usr/bin/env bash
# Regenerate a gen/ folder (protobuf-es TypeScript) from a proto folder. Offline: the local buf and
# protoc-gen-es from node_modules; google/protobuf/* come with buf itself.
#
#   scripts/gen-proto.sh control/proto control/gen     (npm run gen:control)
#   scripts/gen-proto.sh gateway/proto gateway/gen     (npm run gen:gateway)
set -euo pipefail
cd "$(dirname "$0")/.."

PROTO_DIR="$1"
GEN_DIR="$2"

rm -rf "$GEN_DIR"
template=$(cat <<EOT
{"version":"v2","plugins":[{"local":"node_modules/.bin/protoc-gen-es","out":"$GEN_DIR","opt":["target=ts","import_extension=js"]}]}
EOT
)
BUF_CACHE_DIR="${BUF_CACHE_DIR:-${TMPDIR:-/tmp}/tether-buf-cache}" \
  node_modules/.bin/buf generate "$PROTO_DIR" --template "$template"
echo "gen-proto: generated $(find "$GEN_DIR" -name '*.ts' | wc -l) files into $GEN_DIR"
