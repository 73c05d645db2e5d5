#!/usr/bin/env bash
# Regenerate control/gen/ (protobuf-es TypeScript) from control/proto/ (scripts/gen-proto.sh).
set -euo pipefail
exec "$(dirname "$0")/gen-proto.sh" control/proto control/gen
