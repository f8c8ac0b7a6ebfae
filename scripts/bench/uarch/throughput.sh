#!/usr/bin/env bash
# Instruction throughput of the kernels' building blocks on this CPU (throughput.rs): which
# instruction an inner loop is bound by. Built with plain rustc into target/uarch/.
#   bash scripts/bench/uarch/throughput.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
mkdir -p target/uarch
rustc --edition 2021 -C opt-level=3 -o target/uarch/throughput scripts/bench/uarch/throughput.rs
exec target/uarch/throughput
