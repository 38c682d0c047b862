//! Logs as an operator gets them under systemd or in a file: stderr is not a terminal, so no
//! ANSI colour codes; `log.format = "json"` gives one JSON object per line.

mod support;

use support::{free_closed_port, Collector};

fn started(extra: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let mut collector = Collector::start(dir.path(), &url, extra);
    assert!(collector.sigterm_and_wait(std::time::Duration::from_secs(30)).is_some(), "stops on SIGTERM");
    let log = collector.log();
    (dir, log)
}

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let (_dir, log) = started("");
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log written to a file:\n{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (_dir, log) = started("[log]\nformat = \"json\"\n");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("listening on")), "{log}");
}
