//! The counting agent in Rust (`counter`), Python (`counter_py`, built with
//! componentize-py) and JavaScript (`counter_js`, built with jco's QuickJS
//! backend) on the same records, and the Rust one also built as a core
//! module for wasm32-unknown-unknown (`counter_core`, no WASI imports),
//! which the host wraps into a component: each builds the exact expected
//! table, and all tables and changelogs are equal.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use tablehost_tests::{plugin, Harness, TestRecord};

/// The counting agent in each language, by its name in `build/plugins`.
const COUNTERS: [&str; 4] = ["counter", "counter_py", "counter_js", "counter_core"];

/// A table as `(partition, key) -> value`.
type Table = BTreeMap<(u32, Vec<u8>), Vec<u8>>;

/// The last changelog record of each `(partition, key)`: a value, or `None`
/// for a tombstone.
type Changelog = BTreeMap<(u32, Vec<u8>), Option<Vec<u8>>>;

/// What one counter's run left behind.
struct Outcome {
    events: u64,
    dead_letters: u64,
    table: Table,
    changelog: Changelog,
}

const NON_UTF8: &[u8] = &[0xff, 0xfe];

/// Records over two partitions. They repeat keys, use one key in both
/// partitions, and have an empty key and no key, which both count under the
/// empty key. They also have non-UTF-8 keys, a tombstone (which counts),
/// deletes of present and missing keys, and values that only resemble
/// `delete`.
const RECORDS: &[TestRecord<'static>] = &[
    (0, Some(b"alpha"), Some(b"1")),
    (0, Some(b"alpha"), Some(b"2")),
    (0, Some(b""), Some(b"x")),
    (0, None, Some(b"x")),
    (0, Some(NON_UTF8), Some(b"x")),
    (0, Some(b"beta"), Some(b"x")),
    (0, Some(b"beta"), Some(b"delete")),
    (0, Some(b"beta"), Some(b"x")),
    (0, Some(NON_UTF8), Some(b"x")),
    (0, Some(b"alpha"), None),
    (0, Some(b"gamma"), Some(b"delete")),
    (0, Some(b"delete"), Some(b"deleteX")),
    (0, Some(b"k"), Some(b"DELETE")),
    (1, Some(b"alpha"), Some(b"x")),
    (1, Some(b"gamma"), Some(b"x")),
    (1, Some(b"gamma"), Some(b"x")),
    (1, Some(b"gamma"), Some(b"delete")),
    (1, None, Some(b"x")),
    (1, None, Some(b"delete")),
    (1, Some(b"\x00"), Some(b"x")),
    (1, Some("é".as_bytes()), Some(b"x")),
    (1, Some(b"\xc3"), Some(b"x")),
    (1, Some(NON_UTF8), Some(b"delete")),
];

fn expected_table() -> Table {
    [
        ((0, b"".to_vec()), b"2".to_vec()),
        ((0, b"alpha".to_vec()), b"3".to_vec()),
        ((0, b"beta".to_vec()), b"1".to_vec()),
        ((0, b"delete".to_vec()), b"1".to_vec()),
        ((0, b"k".to_vec()), b"1".to_vec()),
        ((0, NON_UTF8.to_vec()), b"2".to_vec()),
        ((1, b"\x00".to_vec()), b"1".to_vec()),
        ((1, b"alpha".to_vec()), b"1".to_vec()),
        ((1, "é".as_bytes().to_vec()), b"1".to_vec()),
        ((1, b"\xc3".to_vec()), b"1".to_vec()),
    ]
    .into_iter()
    .collect()
}

/// Returns the table's entries plus a tombstone for every deleted key,
/// including keys deleted while missing.
fn expected_changelog() -> Changelog {
    let mut changelog: Changelog = expected_table()
        .into_iter()
        .map(|(key, value)| (key, Some(value)))
        .collect();
    for deleted in [
        (0, b"gamma".to_vec()),
        (1, b"".to_vec()),
        (1, b"gamma".to_vec()),
        (1, NON_UTF8.to_vec()),
    ] {
        changelog.insert(deleted, None);
    }
    changelog
}

/// Runs one counter on [`RECORDS`] in a fresh harness.
fn run_counter(name: &str) -> Outcome {
    let harness = Harness::new();
    // One commit at the end of the run, whatever the speed of the language.
    let config = harness.config(&format!(
        r#"
        app_id = "languages"
        commit_interval_ms = 600000
        [[agents]]
        name = "counter"
        component = {:?}
        sources = ["events"]
        tables = ["counts"]
        [[tables]]
        name = "counts"
        "#,
        plugin(name).display().to_string()
    ));
    harness.topic("events", 2);
    harness.produce("events", RECORDS);

    let summary = harness.run_to_end(&config);

    let mut changelog = Changelog::new();
    for record in harness.records("languages-counts-changelog") {
        let key = record.key.expect("changelog records have keys");
        changelog.insert((record.partition, key), record.value);
    }
    Outcome {
        events: summary.events,
        dead_letters: summary.dead_letters,
        table: harness.table(&config, "counts"),
        changelog,
    }
}

/// Returns the outcome of counter `name`, which runs once per test binary
/// however many tests read it.
fn outcome(name: &str) -> &'static Outcome {
    static OUTCOMES: [OnceLock<Outcome>; 4] = [const { OnceLock::new() }; 4];
    let index = COUNTERS
        .iter()
        .position(|counter| *counter == name)
        .expect("name is one of COUNTERS");
    OUTCOMES[index].get_or_init(|| run_counter(name))
}

/// Formats a table with keys and values escaped, for failure messages.
fn show(table: &Table) -> String {
    table
        .iter()
        .map(|((partition, key), value)| {
            format!(
                "{partition}/\"{}\" = \"{}\"",
                key.escape_ascii(),
                value.escape_ascii()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn assert_counts_exactly(name: &str) {
    let outcome = outcome(name);

    assert_eq!(outcome.events, RECORDS.len() as u64, "{name}: events");
    assert_eq!(outcome.dead_letters, 0, "{name}: dead letters");
    assert_eq!(
        outcome.table,
        expected_table(),
        "{name}: table is {}",
        show(&outcome.table)
    );
    assert_eq!(outcome.changelog, expected_changelog(), "{name}: changelog");
}

#[test]
fn rust_counter_counts_exactly() {
    assert_counts_exactly("counter");
}

#[test]
fn python_counter_counts_exactly() {
    assert_counts_exactly("counter_py");
}

#[test]
fn javascript_counter_counts_exactly() {
    assert_counts_exactly("counter_js");
}

#[test]
fn core_module_counter_counts_exactly() {
    assert_counts_exactly("counter_core");
}

#[test]
fn languages_build_equal_tables() {
    let rust = outcome("counter");
    for name in ["counter_py", "counter_js", "counter_core"] {
        let other = outcome(name);
        assert_eq!(
            other.table,
            rust.table,
            "{name}: table is {}, Rust's is {}",
            show(&other.table),
            show(&rust.table)
        );
        assert_eq!(other.changelog, rust.changelog, "{name}: changelog");
    }
}
