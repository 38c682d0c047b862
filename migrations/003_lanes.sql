-- 003_lanes: delivery v2. Cursors belong to a WAL lane (WAL id x lane incarnation), not to a
-- node and a core number; rows MySQL refuses go to a dead-letter table with their raw WAL line.
-- Applied statement by statement (split at lines ending in ';'); every statement is idempotent,
-- so a migration interrupted half-way is simply run again.

-- The v1 cursors (node, core) move aside as ingest_cursors_v1, kept for operators to read
-- ("where was this node?"); nothing reads them any more. The upgrade carries a node's cursors
-- into v2 through commit.meta, which the collector rewrites with its WAL id on the first start.
-- The rename only happens while ingest_cursors is still the v1 table (no wal_id column) and no
-- v1 copy exists yet, so running this again never renames the v2 table.
SET @psc_003_rename = IF(
    (SELECT COUNT(*) FROM information_schema.tables
      WHERE table_schema = DATABASE() AND table_name = 'ingest_cursors') = 1
    AND (SELECT COUNT(*) FROM information_schema.columns
      WHERE table_schema = DATABASE() AND table_name = 'ingest_cursors' AND column_name = 'wal_id') = 0
    AND (SELECT COUNT(*) FROM information_schema.tables
      WHERE table_schema = DATABASE() AND table_name = 'ingest_cursors_v1') = 0,
    'RENAME TABLE ingest_cursors TO ingest_cursors_v1',
    'DO 0');
PREPARE psc_003_rename FROM @psc_003_rename;
EXECUTE psc_003_rename;
DEALLOCATE PREPARE psc_003_rename;
ALTER TABLE ingest_cursors_v1
  COMMENT = 'v1 cursors by (node, core), read-only since 003_lanes; empty on installs that began with v2';

-- How far each WAL lane is durable in this database. Moved in the same transaction as the
-- lane's rows, fenced (UPDATE ... WHERE the cursor is where the batch starts), so it says
-- exactly which rows are in: exactly-once delivery.
CREATE TABLE IF NOT EXISTS ingest_cursors (
  wal_id CHAR(32) CHARACTER SET ascii NOT NULL
    COMMENT 'WAL id: 32 hex digits from <wal.dir>/IDENTITY; a cursor of another WAL id is never applied',
  incarnation CHAR(16) CHARACTER SET ascii NOT NULL
    COMMENT 'Lane incarnation: 16 hex digits from <wal.dir>/core-N/LANE; new when a core dir is created again',
  node VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL
    COMMENT 'ingest.node_id of the collector that moved the cursor last (a label; the lease is per node)',
  core SMALLINT UNSIGNED NOT NULL
    COMMENT 'The N of the lane directory core-N',
  segment INT UNSIGNED NOT NULL
    COMMENT 'WAL segment number of the position just past the last committed record',
  `offset` BIGINT UNSIGNED NOT NULL
    COMMENT 'Byte offset in that segment',
  updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
    COMMENT 'Last move of the cursor, for operators (is this lane still delivering?)',
  PRIMARY KEY (wal_id, incarnation)
) ENGINE=InnoDB COMMENT='Committed WAL position per lane (delivery v2); moved with its rows';

-- Rows MySQL refused (strict-mode data errors, a row larger than the statement limit), one
-- per WAL record, written in the same transaction as the lane's cursor move past them.
-- Replay by hand: the raw line is the WAL record as on disk (`wal inspect` decodes it).
CREATE TABLE IF NOT EXISTS ingest_rejects (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY
    COMMENT 'Insertion order',
  node VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL
    COMMENT 'ingest.node_id of the collector that dead-lettered the row',
  wal_id CHAR(32) CHARACTER SET ascii NOT NULL
    COMMENT 'WAL id (ingest_cursors.wal_id) the record comes from',
  core SMALLINT UNSIGNED NOT NULL
    COMMENT 'The N of the lane directory core-N',
  incarnation CHAR(16) CHARACTER SET ascii NOT NULL
    COMMENT 'Lane incarnation (ingest_cursors.incarnation)',
  segment INT UNSIGNED NOT NULL
    COMMENT 'WAL segment of the record',
  `offset` BIGINT UNSIGNED NOT NULL
    COMMENT 'Byte offset where the record starts in that segment',
  raw_line MEDIUMBLOB NOT NULL
    COMMENT 'The WAL record line as on disk, newline included; only its first bytes if raw_truncated',
  raw_bytes INT UNSIGNED NOT NULL
    COMMENT 'Length of the whole WAL line, bytes',
  raw_truncated BOOLEAN NOT NULL
    COMMENT '1: raw_line was cut so the dead-letter INSERT fits the statement limit (the record stays in the WAL until compaction)',
  error_code INT UNSIGNED NOT NULL
    COMMENT 'MySQL error number (1153: packet or statement limit, also for a row too large alone)',
  error_message VARCHAR(512) CHARACTER SET utf8mb4 NOT NULL
    COMMENT 'MySQL error message (cut at 512 bytes, or shorter if the statement limit needs it)',
  rejected_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
    COMMENT 'When the row was dead-lettered',
  KEY ix_rejects_time (rejected_at),
  KEY ix_rejects_lane (wal_id, incarnation, segment, `offset`)
) ENGINE=InnoDB COMMENT='Dead letters: WAL records MySQL refused, with the error';
