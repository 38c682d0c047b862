//! The embedded migrations and how they are applied.
//!
//! Each file is a list of statements, each idempotent (`IF NOT EXISTS`, guarded renames), split
//! at lines ending in `;`, with whole-line `--` comments. A migration's name is recorded in
//! `schema_migrations` after its last statement, so one interrupted half-way runs again whole.

use super::db::{cell, Db, DbError};
use super::sql::push_quoted;

/// The embedded migrations, applied in order; the name is recorded in `schema_migrations`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../migrations/001_init.sql")),
    ("002_client_context", include_str!("../../migrations/002_client_context.sql")),
    ("003_lanes", include_str!("../../migrations/003_lanes.sql")),
    ("004_stored_fields", include_str!("../../migrations/004_stored_fields.sql")),
];

/// Applies the migrations not yet recorded in `schema_migrations`; returns their names.
pub async fn migrate(db: &mut Db) -> Result<Vec<String>, DbError> {
    let mut applied = Vec::new();
    for &(name, text) in MIGRATIONS {
        if apply(db, name, text).await.map_err(|e| DbError::Migration { name, source: Box::new(e) })? {
            applied.push(name.to_owned());
        }
    }
    Ok(applied)
}

/// Returns whether the migration was applied now (false: it already was).
async fn apply(db: &mut Db, name: &str, text: &str) -> Result<bool, DbError> {
    const WHAT: &str = "read schema_migrations";
    // The table may not exist before 001 ran; creating it first is idempotent.
    let first = split_statements(text).next().unwrap_or_default();
    if first.contains("schema_migrations") {
        db.execute("create schema_migrations", first.as_bytes()).await?;
    }
    let mut check = b"SELECT COUNT(*) FROM schema_migrations WHERE version = ".to_vec();
    push_quoted(name, &mut check);
    let done: u64 = cell(WHAT, &db.query_one(WHAT, &check).await?, 0)?;
    if done > 0 {
        return Ok(false);
    }
    for statement in split_statements(text) {
        db.execute("migration statement", statement.as_bytes()).await?;
    }
    let mut record = b"INSERT IGNORE INTO schema_migrations (version) VALUES (".to_vec();
    push_quoted(name, &mut record);
    record.push(b')');
    db.execute("record migration", &record).await?;
    Ok(true)
}

/// Splits a migration file into statements: whole-line `--` comments are dropped and a
/// statement ends at a line ending in `;` (the `;` is removed).
pub fn split_statements(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut lines = text.lines().filter(|l| !l.trim_start().starts_with("--")).peekable();
    std::iter::from_fn(move || {
        let mut statement = String::new();
        for line in lines.by_ref() {
            let trimmed = line.trim_end();
            if let Some(last) = trimmed.strip_suffix(';') {
                statement.push_str(last);
                return Some(statement);
            }
            statement.push_str(trimmed);
            statement.push('\n');
        }
        (!statement.trim().is_empty()).then_some(statement)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_migration_splits_into_its_tables() {
        let statements: Vec<String> = split_statements(MIGRATIONS[0].1).collect();
        assert_eq!(statements.len(), 4, "{statements:#?}");
        for (s, table) in statements.iter().zip(["schema_migrations", "domains", "events", "ingest_cursors"])
        {
            assert!(s.trim_start().starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} ")), "{s}");
            assert!(!s.contains("--") && !s.contains(';'), "{s}");
            assert!(s.contains("ENGINE=InnoDB"));
        }
    }

    #[test]
    fn lanes_migration_renames_then_creates() {
        let statements: Vec<String> = split_statements(MIGRATIONS[2].1).collect();
        assert_eq!(statements.len(), 7, "{statements:#?}");
        assert!(statements[0].trim_start().starts_with("SET @psc_003_rename"));
        assert!(statements[5].contains("CREATE TABLE IF NOT EXISTS ingest_cursors ("));
        assert!(statements[6].contains("CREATE TABLE IF NOT EXISTS ingest_rejects ("));
        // Every column says what it holds (checked against the server in tests/mysql_sink.rs).
        for table in &statements[5..] {
            let columns = table.lines().filter(|l| l.starts_with("  ") && !l.starts_with("   "));
            let columns: Vec<&str> = columns.filter(|l| !l.contains("KEY ")).collect();
            let comments = table.lines().filter(|l| l.trim_start().starts_with("COMMENT '")).count();
            assert_eq!(columns.len(), comments, "{table}");
        }
    }

    #[test]
    fn stored_fields_migration_alters_each_table_once_and_comments_every_column() {
        let statements: Vec<String> = split_statements(MIGRATIONS[3].1).collect();
        assert_eq!(statements.len(), 2, "{statements:#?}");
        assert!(statements[0].trim_start().starts_with("ALTER TABLE events\n"));
        assert!(statements[0].contains("ADD UNIQUE KEY IF NOT EXISTS uk_events_event_id (event_id)"));
        assert!(statements[1].trim_start().starts_with("ALTER TABLE user_agents\n"));
        for table in &statements {
            let columns = table.matches("ADD COLUMN IF NOT EXISTS").count();
            assert_eq!(columns, table.matches("\n    COMMENT '").count(), "{table}");
        }
    }

    #[test]
    fn splitter_handles_trailing_statement_without_semicolon() {
        let v: Vec<String> = split_statements("-- c;\nSELECT 1;\nSELECT\n 2").collect();
        assert_eq!(v, vec!["SELECT 1".to_owned(), "SELECT\n 2\n".to_owned()]);
    }
}
