#!/usr/bin/env bash
# Reproduce results/naip-change/*.json and results/by-example.json (CPU, ~minutes).
# MODEL defaults to the project's default model (geosearch-starter); MODEL=geosearch-tiny for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-geosearch-starter}
export GEOSEARCH_THREADS=${GEOSEARCH_THREADS:-2}
python scripts/make_naip_change_bench.py out/naip-change-bench
for m in change change+spectral coarse; do
  geosearch eval out/naip-change-bench --method "$m" --model "$MODEL" --scales 256 512 1024 \
    --index "out/naip-change-$MODEL.duckdb" --out "results/naip-change/$m.json" --quiet
done
python scripts/make_naip_change_bench.py out/naip-change-bench-iou05 --iou 0.5
for m in change coarse; do
  geosearch eval out/naip-change-bench-iou05 --method "$m" --model "$MODEL" --scales 256 512 1024 \
    --index "out/naip-change-$MODEL.duckdb" --out "results/naip-change/$m-iou0.5.json" --quiet
done
# query by example vs text-only on the AID dev mosaic (dev split only)
geosearch index out/aid-dev/mosaic/aid_dev.tif --out "out/aid-dev-byex-$MODEL.duckdb" --model "$MODEL" --quiet
python scripts/eval_by_example.py out/aid-dev --index "out/aid-dev-byex-$MODEL.duckdb" --examples 3 --out results/by-example.json
