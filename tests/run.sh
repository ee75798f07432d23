#!/usr/bin/env bash
# Runs every test of s3files-csi. When run as root on Debian it first installs what the tests
# need (see .ci/install-deps); otherwise it expects those to be present.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && [ -z "${S3FILES_SKIP_DEPS:-}" ]; then
  .ci/install-deps
fi

cargo test --locked
