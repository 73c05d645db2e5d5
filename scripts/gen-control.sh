#!/usr/bin/env bash
# Regenerate control/gen/ (protobuf-es TypeScript) from control/proto/. Offline: the local buf
# and protoc-gen-es from node_modules; google/protobuf/* come with buf itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTO_DIR="control/proto"
GEN_DIR="control/gen"

rm -rf "$GEN_DIR"
template=$(cat <<EOT
{"version":"v2","plugins":[{"local":"node_modules/.bin/protoc-gen-es","out":"$GEN_DIR","opt":["target=ts","import_extension=js"]}]}
EOT
)
BUF_CACHE_DIR="${BUF_CACHE_DIR:-${TMPDIR:-/tmp}/tether-buf-cache}" \
  node_modules/.bin/buf generate "$PROTO_DIR" --template "$template"
echo "gen-control: generated $(find "$GEN_DIR" -name '*.ts' | wc -l) files into $GEN_DIR"
