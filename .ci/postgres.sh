#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster and gives corridor a role and a database for the
# controller's shared-store tests; prints the URL to export as CORRIDOR_TEST_POSTGRES.
# The URL uses the Unix socket: reachable from every network namespace the netns tests make.
# Used by .ci/run; a developer can run it too (as root): eval "$(.ci/postgres.sh)"
set -euo pipefail
command -v pg_ctlcluster >/dev/null || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then pg_createcluster 15 main >&2; cluster="15 main"; fi
read -r version name <<<"$cluster"
hba="/etc/postgresql/$version/$name/pg_hba.conf"
# Password logins for the corridor role over the socket (the default for local is peer).
grep -q '^local all corridor scram-sha-256' "$hba" \
  || sed -i '1i local all corridor scram-sha-256' "$hba"
pg_ctlcluster "$version" "$name" start >&2 2>/dev/null || pg_ctlcluster "$version" "$name" reload >&2
for _ in $(seq 100); do su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break; sleep 0.2; done
su postgres -c "psql -q -v ON_ERROR_STOP=1" >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'corridor') THEN
    CREATE ROLE corridor LOGIN PASSWORD 'corridor' CREATEDB;
  END IF;
END $$;
SQL
su postgres -c "psql -Atqc \"SELECT 1 FROM pg_database WHERE datname = 'corridor_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O corridor corridor_test" >&2
echo "export CORRIDOR_TEST_POSTGRES='postgresql://corridor:corridor@%2Fvar%2Frun%2Fpostgresql/corridor_test'"
