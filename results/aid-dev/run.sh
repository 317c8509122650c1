#!/bin/sh
# Rebuild the dev benchmark and refresh results/aid-dev/<method>.json, the plots and the README table.
# Usage: sh results/aid-dev/run.sh [MODEL]   (default: the starter model)
set -e
MODEL=${1:-geosearch-starter}
export GEOSEARCH_THREADS=${GEOSEARCH_THREADS:-2}
[ -f out/aid-dev/bench.json ] || geosearch bench aid-mosaic --split dev out/aid-dev
for m in $(geosearch eval --list-methods | awk 'NR>2 {print $1}'); do
  geosearch eval out/aid-dev --method "$m" --model "$MODEL" --out "results/aid-dev/$m.json" --quiet
done
geosearch eval --plot results/aid-dev/*.json --out-dir results/plots
geosearch eval --results-table results/aid-dev/*.json --update-readme README.md
