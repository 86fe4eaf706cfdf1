#!/bin/bash
# A/B of two source trees of this project on the same measurement: ours (lean S3 client, 2 workers,
# 32 fetches each, batch_pool 4, batch 32, the realistic PIL recipe) reads one shuffled epoch of the
# benchmark's 2,000 synthetic JPEGs from benchmarking.s3_server at 50 ms (+-5 ms), rounds interleaved.
# Used to check that a refactor kept the figures: compare a checkout of the old commit with the new.
#   bash benchmarking/misc/ab_trees.sh OLD_TREE NEW_TREE DATA_DIR [ROUNDS]
# DATA_DIR: a prepared synthetic dataset (benchmarking/results/data/synthetic-2000x500x375-100c-100kb-s0
# after any configs/*.yaml run). Prints one JSON line per run.
set -euo pipefail
OLD=$1 NEW=$2 DATA=$3 ROUNDS=${4:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PYTHONPATH=$NEW python -m benchmarking.s3_server --port "$PORT" --latency-ms 50 --jitter-ms 5 \
  --bucket "synthetic=$DATA" >/dev/null 2>&1 &
SRV=$!
trap 'kill $SRV' EXIT
sleep 4
for r in $(seq "$ROUNDS"); do
  for tree in "$OLD" "$NEW"; do
    for impl in asyncio threaded; do
      out=$(cd /tmp && PYTHONPATH=$tree python "$HERE/ab_trees_client.py" "http://127.0.0.1:$PORT" "$DATA" "$impl" | tail -1)
      echo "{\"round\": $r, \"tree\": \"$tree\", \"impl\": \"$impl\", \"result\": $out}"
    done
  done
done
