-- The read-only role Grafana's "jinsuan PostgreSQL" datasource connects as.
--
-- Run it in the platform's database after the platform has migrated it (grants name tables),
-- and again after an upgrade adds tables the dashboards read. Then let the role log in:
--   psql "$DATABASE_URL" -f deploy/postgres/grafana-readonly.sql \
--        -c "ALTER ROLE jinsuan_grafana LOGIN PASSWORD '...'"
-- It may read the inventory, the rollups, the raw samples (the site detail dashboard plots each
-- device) and when each agent reported; not the API keys, enrolment tokens, agents' public keys
-- or report signatures. tests/test_dashboards.py runs every dashboard query as it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jinsuan_grafana') THEN
        CREATE ROLE jinsuan_grafana NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO jinsuan_grafana', current_database());
END $$;

ALTER ROLE jinsuan_grafana SET default_transaction_read_only = on;
ALTER ROLE jinsuan_grafana SET statement_timeout = '60s';
-- Dashboard queries are short and many: PostgreSQL's JIT compiles them for longer than they run
-- (a second and more for a 90-day scheduling panel), and sorts of a panel's rows fit in memory.
ALTER ROLE jinsuan_grafana SET jit = off;
ALTER ROLE jinsuan_grafana SET work_mem = '32MB';

GRANT USAGE ON SCHEMA public TO jinsuan_grafana;
GRANT SELECT ON enterprises, sites, racks, accelerators, meters, series, samples,
                rollup_site_hourly, rollup_enterprise_hourly, rollup_state,
                rollup_series_hourly, rollup_series_daily, rollup_agent_lag_hourly,
                rollup_site_daily,
                pue_site_hourly  -- PUE defined once (migration 0013), pue_site_range reads it
    TO jinsuan_grafana;
GRANT SELECT (id, site_id, hostname, enrolled_at, last_seq, last_report_at, revoked_at)
    ON agents TO jinsuan_grafana;
GRANT SELECT (agent_id, seq, created_at, received_at, samples) ON reports TO jinsuan_grafana;

-- The scheduling dashboard: jobs, runs, their transitions and metered usage; not the job specs
-- (their payloads carry commands and environments), runs' log tails or fencing tokens.
GRANT SELECT (id, tenant, project, name, constraints, tasks, accelerators_per_task, priority,
              state, tries, current_run_id, submitted_at, state_changed_at, ended_at,
              end_reason)
    ON jobs TO jinsuan_grafana;
GRANT SELECT (id, job_id, attempt, site_id, model, accelerators, state, placed_at, leased_at,
              started_at, ended_at, exit_code, end_reason, tenant, submitted_at)
    ON runs TO jinsuan_grafana;
GRANT SELECT ON job_transitions, usage_records, rollup_queue_hourly, rollup_queue_state,
                rollup_placements_hourly, rollup_placements_daily, rollup_outcomes_hourly,
                rollup_outcomes_daily
    TO jinsuan_grafana;

-- The rewards dashboard: assessments (which is the latest, when and under which policy) and
-- their awards; not the frozen inputs or the policy text kept with each assessment, nor who
-- assessed, proposed or approved (API key ids), nor payment references.
GRANT SELECT (id, year, measure, policy_id, policy_version, created_at)
    ON reward_assessments TO jinsuan_grafana;
GRANT SELECT (id, assessment_id, measure, year, enterprise_id, data_centre, amount, eligible,
              detail, state)
    ON reward_awards TO jinsuan_grafana;

-- The rewards dashboard's vouchers: face values, pool years and states, what each draw drew
-- and whether it is settled, when a settlement was paid, what clawbacks returned, and each
-- applicant's kind and province; not the applications and their evidence, applicants' names
-- or credit codes, draws' reasons and jobs, end and clawback reasons, payment references,
-- nor the ledger.
GRANT SELECT (id, applicant_id, provider_id, pool_year, face_value, state)
    ON vouchers TO jinsuan_grafana;
GRANT SELECT (voucher_id, amount, settlement_id) ON voucher_draws TO jinsuan_grafana;
GRANT SELECT (id, paid_at) ON voucher_settlements TO jinsuan_grafana;
GRANT SELECT (voucher_id, amount) ON voucher_clawbacks TO jinsuan_grafana;
GRANT SELECT (id, kind, in_province) ON voucher_applicants TO jinsuan_grafana;
