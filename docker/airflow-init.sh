#!/usr/bin/env bash
# One-shot init job: migrate the Airflow metadata DB, create the Lockstep pool and the login.
set -euo pipefail
: "${LOCKSTEP_ADMIN_PASSWORD:?set LOCKSTEP_ADMIN_PASSWORD (see .env.example)}"
# The simple auth manager reads passwords from this file (users from AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS).
python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump({os.environ.get("LOCKSTEP_ADMIN_USER", "admin"): os.environ["LOCKSTEP_ADMIN_PASSWORD"]}, f)
PY
airflow db migrate
airflow pools set "${LOCKSTEP_POOL:-lockstep}" "${LOCKSTEP_POOL_SLOTS:-4}" "Lockstep jobs: backfills queue instead of stampeding"
echo "airflow-init: database migrated, pool ${LOCKSTEP_POOL:-lockstep} ready"
