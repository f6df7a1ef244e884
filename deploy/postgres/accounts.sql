-- deploy/postgres/accounts.toml as SQL, for the compose stack's one-shot `accounts` job (no
-- `bookstore` subcommand applies the accounts file to an external server today; `bookstore up` and
-- the test harness apply it through stack::accounts). Keep the two in step. Idempotent: applying it
-- twice changes nothing. Run as the superuser on the primary, passwords as psql variables:
--   psql -v ON_ERROR_STOP=1 -v books_password=… -v orders_password=… -v coordinator_password=… \
--        -v warehouse_password=… -v warehouse_reader_password=… -f accounts.sql

-- Service roles own exactly their own database: no superuser, no CREATEDB/CREATEROLE, no replication.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', r)
FROM unnest(ARRAY['books', 'orders', 'coordinator', 'warehouse', 'warehouse_reader']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec

ALTER ROLE books PASSWORD :'books_password';
ALTER ROLE orders PASSWORD :'orders_password';
ALTER ROLE coordinator PASSWORD :'coordinator_password';
ALTER ROLE warehouse PASSWORD :'warehouse_password';
ALTER ROLE warehouse_reader PASSWORD :'warehouse_reader_password';

SELECT format('CREATE DATABASE %I OWNER %I', d, d)
FROM unnest(ARRAY['books', 'orders', 'coordinator', 'warehouse']) AS d
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)
\gexec

-- No other role can even connect to a service's database.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', d)
FROM unnest(ARRAY['books', 'orders', 'coordinator', 'warehouse']) AS d
\gexec

-- The read-only reader: CONNECT on books and orders, SELECT on every table there, including the
-- tables their owners create later, and every transaction read-only by default.
GRANT CONNECT ON DATABASE books, orders TO warehouse_reader;
ALTER ROLE warehouse_reader SET default_transaction_read_only = on;

\connect books
GRANT USAGE ON SCHEMA public TO warehouse_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO warehouse_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE books IN SCHEMA public GRANT SELECT ON TABLES TO warehouse_reader;

\connect orders
GRANT USAGE ON SCHEMA public TO warehouse_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO warehouse_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE orders IN SCHEMA public GRANT SELECT ON TABLES TO warehouse_reader;
