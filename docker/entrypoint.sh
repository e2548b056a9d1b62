#!/usr/bin/env bash
# Entrypoint of every Lockstep container: run the given command with the repo's DAGs and the shared lake.
set -euo pipefail
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-/opt/lockstep/dags}"
mkdir -p "${LOCKSTEP_LAKE:-/lake}" 2>/dev/null || true
exec "$@"
