#!/bin/sh
# Rebuild the dev benchmark and refresh results/aid-dev/<method>.json, the plots and the README table.
# Usage: sh results/aid-dev/run.sh [MODEL] [METHOD...]   (default: the starter model; retrieval methods
# that are registered among: answer segment pyramid coarse single-scale)
set -e
MODEL=${1:-geosearch-starter}
[ $# -gt 0 ] && shift
METHODS=${*:-answer segment pyramid coarse single-scale}
export GEOSEARCH_THREADS=${GEOSEARCH_THREADS:-2}
[ -f out/aid-dev/bench.json ] || geosearch bench aid-mosaic --split dev out/aid-dev
KNOWN=$(geosearch eval --list-methods | awk 'NR>2 {print $1}')
for m in $METHODS; do
  if echo "$KNOWN" | grep -qx -- "$m"; then
    geosearch eval out/aid-dev --method "$m" --model "$MODEL" --out "results/aid-dev/$m.json" --quiet
  fi
done
geosearch eval --plot results/aid-dev/*.json --out-dir results/plots
geosearch eval --results-table results/aid-dev/*.json --update-readme README.md
