-- Grafana's read-only PostgreSQL role: LOGIN, no superuser or other role attributes, SELECT on
-- the tables the dashboard (and Explore on this data source) reads, nothing else. Run with psql
-- as the database owner after the migrations (compose's `grafana-db-role` job; idempotent: it
-- also resets the password and the grants, so it runs on every `up`):
--
--   GRAFANA_DB_PASSWORD_FILE=/run/secrets/postgres_grafana_password psql -f grafana-reader.sql
--
-- `-v role=<name>` names another role (default klinebus_grafana, what
-- grafana/provisioning/datasources/datasources.yml logs in as).
\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role klinebus_grafana
\endif
-- The password from its file (psql strips the trailing newline); an empty one is refused below,
-- because PostgreSQL would silently clear it.
\set password `cat "$GRAFANA_DB_PASSWORD_FILE"`
-- Handed to the block below as session settings (psql does not interpolate inside $$ … $$).
SET klinebus.reader = :'role';
SET klinebus.password = :'password';

DO $$
DECLARE
  reader text := current_setting('klinebus.reader');
  password text := current_setting('klinebus.password');
BEGIN
  IF password = '' THEN
    RAISE EXCEPTION 'the password of % is empty (GRAFANA_DB_PASSWORD_FILE)', reader;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = reader) THEN
    EXECUTE format('CREATE ROLE %I', reader);
  END IF;
  -- No inherited rights either: only what is granted to this role below.
  EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                 'NOBYPASSRLS NOINHERIT CONNECTION LIMIT 10 PASSWORD %L', reader, password);
  -- Guards, not the boundary (a session may change them): the grants are.
  EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', reader);
  EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', reader, '30s');
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), reader);
  EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', reader);
  -- What PostgreSQL 15 and later do by default; before 15 every role could create tables in
  -- public.
  EXECUTE 'REVOKE CREATE ON SCHEMA public FROM PUBLIC';
  EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', reader);
  -- ingestion_status: the dashboard's freshness panels; ohlcv_candles: the candles themselves.
  EXECUTE format('GRANT SELECT ON ingestion_status, ohlcv_candles TO %I', reader);
END
$$;

RESET klinebus.password;
