//! `config.toml` at the repository root documents the defaults: it must parse and say exactly
//! what `Config::default()` says, so the file and `src/config.rs` cannot drift apart.
use psc::config::Config;

#[test]
fn repository_config_toml_equals_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let from_file = Config::from_toml(&text).unwrap();
    let (file, default) = (format!("{from_file:#?}"), format!("{:#?}", Config::default()));
    let differing: Vec<(&str, &str)> = file.lines().zip(default.lines()).filter(|(f, d)| f != d).collect();
    assert!(differing.is_empty(), "config.toml vs Config::default(): {differing:?}");
    assert_eq!(file.lines().count(), default.lines().count());
}
