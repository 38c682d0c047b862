-- 002_client_context: who sent each event (IP, User-Agent, Referer host) and the extra
-- parameters kept by ingest.keep_params. Every column is nullable: events from before this
-- migration, and parts switched off in the config (ingest.client_ip / user_agent / referer),
-- are NULL. Idempotent like 001 (IF NOT EXISTS everywhere).

-- The client IP as its 4 (IPv4) or 16 (IPv6) network-order bytes: VARBINARY(16) rather than
-- VARCHAR(45) because it is 4 bytes for the common case instead of up to 46, has exactly one
-- spelling per address (IPv6 text has many), sorts and range-scans by numeric prefix (CIDR
-- queries), and reads back with INET6_NTOA(client_ip).
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_ip VARBINARY(16) NULL
  COMMENT 'Client IP, 4 or 16 bytes (INET6_NTOA to read): socket peer or trusted X-Forwarded-For';

-- 64-bit FNV-1a of the User-Agent text; the text itself lives once in user_agents.
ALTER TABLE events ADD COLUMN IF NOT EXISTS ua_hash BIGINT UNSIGNED NULL
  COMMENT 'FNV-1a 64 of the User-Agent; user_agents.hash';

-- Lower-case host of the Referer (the page that embedded the player).
ALTER TABLE events ADD COLUMN IF NOT EXISTS referer_host VARCHAR(253) CHARACTER SET ascii NULL
  COMMENT 'Lower-case host of the Referer URL';

-- Query parameters kept by ingest.keep_params, as a JSON object of strings, at most 1 KiB.
ALTER TABLE events ADD COLUMN IF NOT EXISTS extra VARCHAR(1024) CHARACTER SET utf8mb4 NULL
  COMMENT 'JSON object of the kept extra parameters (ingest.keep_params), <= 1 KiB';

-- The User-Agent texts, once each, so events stay narrow (8 bytes instead of ~150).
CREATE TABLE IF NOT EXISTS user_agents (
  -- FNV-1a 64 of ua, as computed by the collector (events.ua_hash).
  hash BIGINT UNSIGNED NOT NULL PRIMARY KEY COMMENT 'FNV-1a 64 of ua',
  -- The User-Agent as sent (at most 512 bytes, cut at a character boundary).
  ua VARCHAR(512) CHARACTER SET utf8mb4 NOT NULL COMMENT 'User-Agent text, <= 512 bytes'
) ENGINE=InnoDB COMMENT='User-Agent texts by hash; written with INSERT IGNORE';
