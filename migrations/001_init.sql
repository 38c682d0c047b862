-- 001_init: the tables of player-stat-collector.
-- Applied statement by statement (split at lines ending in ';'); every statement is
-- idempotent so a half-applied migration can simply be run again.
-- Comments are whole lines starting with '--' so the splitter can drop them.

-- Which migrations have been applied; one row each, written after its last statement.
CREATE TABLE IF NOT EXISTS schema_migrations (
  -- Migration name, e.g. '001_init'.
  version VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  -- When it was applied (server time zone; the collector's sessions use UTC).
  applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB;

-- Domain names, stored once; events refer to them by id (4 bytes instead of up to 253).
CREATE TABLE IF NOT EXISTS domains (
  -- Surrogate key referenced by events.domain_id.
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  -- Lower-case hostname as validated by the collector (ASCII only: IDNs arrive as punycode).
  -- ascii_bin: exact, case-sensitive byte comparison, which is what the validator produces.
  name VARCHAR(253) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  -- Name lookups (the flusher's INSERT IGNORE + SELECT … WHERE name IN) and uniqueness.
  UNIQUE KEY uk_domains_name (name)
) ENGINE=InnoDB;

-- One row per accepted beacon, written exactly once by the flusher.
-- events.domain_id has NO enforced FOREIGN KEY: InnoDB would look up domains.PRIMARY and take
-- a shared lock on it for every inserted row, ~300k extra index probes per second at full
-- rate, and would serialise our inserts with anything touching those domain rows. The
-- flusher guarantees the reference itself: it inserts the domain (INSERT IGNORE) and reads
-- its id back before the event row is built, and domains are never deleted.
CREATE TABLE IF NOT EXISTS events (
  -- Insertion order; append-only, so inserts always go to the right edge of the B-tree.
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  -- When the collector received the beacon, UTC, millisecond precision.
  received_at DATETIME(3) NOT NULL,
  -- Event name, [a-z0-9_]{1,32} (e.g. play, pause); ascii keeps it 1 byte per char.
  event VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  -- domains.id of the page that sent the beacon.
  domain_id INT UNSIGNED NOT NULL,
  -- The player's file id (>= 1).
  file_id BIGINT UNSIGNED NOT NULL,
  -- "Events in a time range" (dashboards, retention deletes by time).
  KEY ix_events_received_at (received_at),
  -- "Events of one domain in a time range" (per-site statistics).
  KEY ix_events_domain_time (domain_id, received_at)
) ENGINE=InnoDB;

-- How far each collector core's WAL is durable in this database. Updated in the same
-- transaction as the event rows, so it says exactly which rows are in (exactly-once delivery).
CREATE TABLE IF NOT EXISTS ingest_cursors (
  -- Collector node id (config ingest.node_id, default the hostname).
  node VARCHAR(64) CHARACTER SET ascii NOT NULL,
  -- Core number inside the node.
  core SMALLINT UNSIGNED NOT NULL,
  -- WAL segment number of the position just past the last committed record.
  segment INT UNSIGNED NOT NULL,
  -- Byte offset in that segment.
  `offset` BIGINT UNSIGNED NOT NULL,
  -- Last change, for operators ("is this node still delivering?").
  updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  PRIMARY KEY (node, core)
) ENGINE=InnoDB;
