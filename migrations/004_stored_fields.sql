-- 004_stored_fields: the fields issue 14 stores. events gets the client's event id (one row
-- per id, kept by a unique key) and the GeoIP country; user_agents gets what the User-Agent
-- says (family, OS, device class, bot flag), parsed once per distinct UA by the sink.
-- Every new column is nullable: rows from before this migration, events without an id, GeoIP
-- off. Idempotent like 001-003 (IF NOT EXISTS everywhere); each table is altered by ONE
-- statement, so a large table is rebuilt (or its index built) once, not once per column.

-- event_id: the 16 bytes of the client's UUID (`eid` / `event_id`), BINARY rather than
-- CHAR(36) (16 bytes instead of 36, one spelling per id; HEX() or a UUID function reads it).
-- The unique key is what de-duplicates: the sink inserts with IGNORE semantics, so the same id
-- twice, from any core, node or time, is one row. NULLs never collide in a unique key, so
-- events without an id are all kept. The key bounds nothing in time or space: it holds every
-- id ever stored, and a retention delete that removes a row also forgets its id.
-- country: ISO 3166-1 alpha-2 upper case (e.g. 'US'), ascii so it is 2 bytes.
ALTER TABLE events
  ADD COLUMN IF NOT EXISTS event_id BINARY(16) NULL
    COMMENT 'Client event id (eid / event_id), the 16 bytes of the UUID; unique: one row per id',
  ADD COLUMN IF NOT EXISTS country CHAR(2) CHARACTER SET ascii COLLATE ascii_bin NULL
    COMMENT 'ISO 3166-1 alpha-2 country of client_ip (enrich.geoip_db), looked up at intake',
  ADD UNIQUE KEY IF NOT EXISTS uk_events_event_id (event_id);

-- What the User-Agent says, from woothee plus the collector's tablet, TV and automation
-- rules (crate::ingest::user_agent). NULL in all four: a row stored before this migration and
-- not seen since (the sink fills them in when it next meets the UA). family and os are names
-- from the parser's dataset (<= 64 bytes), never client text; NULL there means unknown.
ALTER TABLE user_agents
  ADD COLUMN IF NOT EXISTS family VARCHAR(64) CHARACTER SET utf8mb4 NULL
    COMMENT 'Browser or bot family: Chrome, Firefox, Safari, Googlebot, ...; NULL: unknown',
  ADD COLUMN IF NOT EXISTS os VARCHAR(64) CHARACTER SET utf8mb4 NULL
    COMMENT 'Operating system: Windows 10, Mac OSX, Android, iPhone, ...; NULL: unknown',
  ADD COLUMN IF NOT EXISTS device ENUM('desktop', 'mobile', 'tablet', 'tv', 'bot') NULL
    COMMENT 'Device class; bot for every automated client; NULL: unknown',
  ADD COLUMN IF NOT EXISTS is_bot BOOLEAN NULL
    COMMENT '1: a crawler, HTTP library or headless browser (ingest.drop_bots drops these); NULL: not parsed yet';
