-- The supervisors' database on the plant's PostgreSQL (Debian's `postgresql` package, version 13
-- or later): one role that logs in with a password, one database it owns. Run once as the
-- superuser:
--
--   sudo -u postgres psql -v pw="'$(cat /etc/inspectd/supervisor-db.password)'" -f setup.sql
--
-- The supervisors create and migrate their tables themselves on start (under an advisory lock:
-- two instances starting together take turns). Nothing else needs granting.
CREATE ROLE inspectd_supervisor LOGIN PASSWORD :pw;
CREATE DATABASE inspectd OWNER inspectd_supervisor ENCODING 'UTF8' TEMPLATE template0;
-- Each supervisor holds about 10 connections (its writer, its live-view follower, up to 8 for
-- web requests): the default max_connections (100) serves several.
