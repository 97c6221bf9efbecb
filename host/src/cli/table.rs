//! `tablehost table dump|get`: reading tables from a stopped application's
//! state directory.
//!
//! Output is JSON lines `{"key": ..., "value": ..., "partition": n}`. A key
//! or value that is valid UTF-8 is shown as a string, except that a value
//! which is itself JSON is embedded as JSON; other bytes are shown as
//! `{"hex": "..."}`.
//!
//! A windowed table shows each entry with its table key and its window,
//! `{"key": ..., "window": {"start": ms, "end": ms}, "value": ..., "partition": n}`,
//! and each partition's stream time as `{"stream_time": ms, "partition": n}`.

use std::io::Write;
use std::ops::Bound;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::config::{Config, StoreKind};
use crate::manager::table_dir;
use crate::store::{RocksStore, Store};
use crate::table::window::{WindowSpec, STREAM_TIME_KEY};

#[derive(Debug, Subcommand)]
pub(crate) enum TableCommand {
    /// Print every entry of a table as JSON lines.
    Dump {
        /// The application config.
        #[arg(long, short)]
        config: PathBuf,
        /// The table name.
        table: String,
    },
    /// Print the entry of one key (UTF-8) in every partition that contains
    /// it; for a windowed table, every window of the key.
    Get {
        /// The application config.
        #[arg(long, short)]
        config: PathBuf,
        /// The table name.
        table: String,
        /// The key, as UTF-8 text.
        key: String,
    },
}

pub(super) fn table(command: TableCommand) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        TableCommand::Dump { config, table } => {
            let (store, windows) = open(&config, &table)?;
            for partition in store.partitions()? {
                for entry in store.iter(partition)? {
                    let (key, value) = entry?;
                    let line = match &windows {
                        Some(spec) => render_windowed(spec, &key, &value, partition),
                        None => render(&key, &value, partition),
                    };
                    writeln!(out, "{line}")?;
                }
            }
        }
        TableCommand::Get { config, table, key } => {
            let (store, windows) = open(&config, &table)?;
            let mut found = false;
            for partition in store.partitions()? {
                match &windows {
                    Some(spec) => {
                        let prefix = WindowSpec::key_prefix(key.as_bytes());
                        for entry in store.range(
                            partition,
                            Bound::Included(prefix.as_slice()),
                            Bound::Unbounded,
                        )? {
                            let (stored, value) = entry?;
                            if !stored.starts_with(&prefix) {
                                break;
                            }
                            writeln!(out, "{}", render_windowed(spec, &stored, &value, partition))?;
                            found = true;
                        }
                    }
                    None => {
                        if let Some(value) = store.get(partition, key.as_bytes())? {
                            writeln!(out, "{}", render(key.as_bytes(), &value, partition))?;
                            found = true;
                        }
                    }
                }
            }
            if !found {
                bail!("table {table}: key {key:?} not found");
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Opens a table's store, with the table's window spec when it is windowed.
fn open(
    config_path: &std::path::Path,
    table: &str,
) -> anyhow::Result<(RocksStore, Option<WindowSpec>)> {
    let config = Config::load(config_path)?;
    let Some(table_config) = config.tables.iter().find(|t| t.name == table) else {
        let names: Vec<_> = config.tables.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "table {table} is not declared in {}; declared tables: {}",
            config_path.display(),
            names.join(", ")
        );
    };
    if table_config.store == StoreKind::Memory {
        bail!(
            "table {table} uses the memory store, which keeps nothing on disk; set store = \"rocksdb\" for the \
             table and run the application again to read it here"
        );
    }
    let dir = table_dir(&config.state_dir(), table);
    if !dir.is_dir() {
        bail!(
            "table {table}: no state at {}; run the application first",
            dir.display()
        );
    }
    let store = RocksStore::open(table, &dir, &table_config.rocksdb)
        .with_context(|| format!("table {table}: stop the application before reading its state"))?;
    Ok((store, table_config.window.as_ref().map(WindowSpec::new)))
}

/// Renders one entry of a windowed table: its table key and window, or
/// the partition's stream time.
pub(crate) fn render_windowed(
    spec: &WindowSpec,
    stored: &[u8],
    value: &[u8],
    partition: u32,
) -> Value {
    if stored == STREAM_TIME_KEY {
        if let Ok(bytes) = <[u8; 8]>::try_from(value) {
            return json!({ "stream_time": i64::from_be_bytes(bytes), "partition": partition });
        }
    }
    match spec.parse_store_key(stored) {
        Some((key, window)) => json!({
            "key": render_bytes(&key, false),
            "window": { "start": window.start, "end": window.end },
            "value": render_bytes(value, true),
            "partition": partition,
        }),
        None => render(stored, value, partition),
    }
}

/// Renders one entry as a JSON object.
pub(crate) fn render(key: &[u8], value: &[u8], partition: u32) -> Value {
    json!({ "key": render_bytes(key, false), "value": render_bytes(value, true), "partition": partition })
}

fn render_bytes(bytes: &[u8], allow_json: bool) -> Value {
    if allow_json {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            return value;
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_json_text_and_hex() {
        assert_eq!(
            render(b"ATL", br#"{"flights":2}"#, 3).to_string(),
            r#"{"key":"ATL","partition":3,"value":{"flights":2}}"#
        );
        assert_eq!(
            render(&[0xff, 0x00], b"plain", 0).to_string(),
            r#"{"key":{"hex":"ff00"},"partition":0,"value":"plain"}"#
        );
        assert_eq!(
            render(b"", b"", 1).to_string(),
            r#"{"key":"","partition":1,"value":""}"#
        );
    }

    #[test]
    fn render_windowed_shows_key_window_and_stream_time() {
        let spec = WindowSpec::new(&crate::config::WindowConfig {
            kind: crate::config::WindowKind::Tumbling,
            size_ms: 60_000,
            step_ms: None,
            expires_ms: 0,
            time_field: None,
        });
        let stored = WindowSpec::store_key(b"home", 120_000);
        assert_eq!(
            render_windowed(&spec, &stored, b"3", 0).to_string(),
            r#"{"key":"home","partition":0,"value":3,"window":{"end":180000,"start":120000}}"#
        );
        assert_eq!(
            render_windowed(&spec, STREAM_TIME_KEY, &125_000i64.to_be_bytes(), 1).to_string(),
            r#"{"partition":1,"stream_time":125000}"#
        );
    }
}
