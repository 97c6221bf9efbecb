//! Agent guards with the `misbehave` component. Traps, CPU and memory
//! bounds, stack overflow and agent errors send the event to the
//! dead-letter topic, and the next events are handled. Undeclared tables
//! and topics and oversized values return errors to the guest.

use tablehost::config::Config;
use tablehost::worker::RunSummary;
use tablehost_tests::{plugin, Harness, Record};

const DEAD_LETTERS: &str = "guards-misbehave-dead-letters";

fn config(harness: &Harness) -> Config {
    harness.config(&format!(
        r#"
        app_id = "guards"
        [[agents]]
        name = "misbehave"
        component = {:?}
        sources = ["commands"]
        outputs = ["misbehave-out"]
        tables = ["counts", "results"]
        [agents.limits]
        cpu_ms_per_event = 100
        memory_mib = 16
        [[tables]]
        name = "counts"
        [[tables]]
        name = "results"
        "#,
        plugin("misbehave").display().to_string()
    ))
}

/// Runs `count`, then `command`, then `count` again on one key each, and
/// returns the run summary, the `counts` value of the counted key and the
/// dead letters.
fn around(command: &str) -> (RunSummary, Vec<u8>, Vec<Record>, Harness, Config) {
    let harness = Harness::new();
    let config = config(&harness);
    harness.topic("commands", 1);
    harness.produce(
        "commands",
        &[
            (0, Some(b"counted"), Some(b"count")),
            (0, Some(b"bad"), Some(command.as_bytes())),
            (0, Some(b"counted"), Some(b"count")),
        ],
    );
    let summary = harness.run_to_end(&config);
    let table = harness.table(&config, "counts");
    let counted = table[&(0, b"counted".to_vec())].clone();
    let dead = harness.records(DEAD_LETTERS);
    (summary, counted, dead, harness, config)
}

fn assert_dead_letter(dead: &[Record], command: &str, error_part: &str) {
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key.as_deref(), Some(b"bad".as_slice()));
    assert_eq!(letter.value.as_deref(), Some(command.as_bytes()));
    assert_eq!(
        letter.header("tablehost-agent").as_deref(),
        Some("misbehave")
    );
    assert_eq!(
        letter.header("tablehost-topic").as_deref(),
        Some("commands")
    );
    assert_eq!(letter.header("tablehost-partition").as_deref(), Some("0"));
    assert_eq!(letter.header("tablehost-offset").as_deref(), Some("1"));
    let error = letter.header("tablehost-error").unwrap();
    assert!(
        error.contains(error_part),
        "error header {error:?} lacks {error_part:?}"
    );
}

#[test]
fn trap_goes_to_dead_letters() {
    let (summary, counted, dead, ..) = around("trap");
    assert_eq!(summary.events, 3);
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(counted, b"2");
    assert_dead_letter(&dead, "trap", "misbehave: trap requested at offset 1");
}

#[test]
fn endless_loop_hits_cpu_bound() {
    let (summary, counted, dead, ..) = around("loop");
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(counted, b"2");
    assert_dead_letter(&dead, "loop", "interrupt");
}

#[test]
fn memory_growth_hits_memory_cap() {
    let (summary, counted, dead, ..) = around("grow");
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(counted, b"2");
    assert_dead_letter(&dead, "grow", "trap: forcing trap when growing memory");
}

#[test]
fn stack_overflow_goes_to_dead_letters() {
    let (summary, counted, dead, ..) = around("recurse");
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(counted, b"2");
    // A Rust guest keeps its stack in linear memory, so running off its
    // end is an out-of-bounds access rather than wasmtime's own stack
    // overflow trap.
    assert_dead_letter(
        &dead,
        "recurse",
        "trap: wasm trap: out of bounds memory access",
    );
}

#[test]
fn agent_error_goes_to_dead_letters() {
    let (summary, counted, dead, ..) = around("fail");
    assert_eq!(summary.dead_letters, 1);
    assert_eq!(counted, b"2");
    assert_dead_letter(&dead, "fail", "misbehave: failure requested");
}

fn result_of(command: &str) -> String {
    let (summary, counted, dead, harness, config) = around(command);
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(counted, b"2");
    assert!(dead.is_empty());
    let results = harness.table(&config, "results");
    String::from_utf8(results[&(0, command.as_bytes().to_vec())].clone()).unwrap()
}

#[test]
fn undeclared_table_is_rejected() {
    assert_eq!(
        result_of("open-undeclared"),
        r#"Undeclared("not-declared")"#
    );
}

#[test]
fn undeclared_topic_is_rejected() {
    assert_eq!(
        result_of("send-undeclared"),
        r#"UndeclaredTopic("not-declared")"#
    );
}

#[test]
fn oversized_value_is_rejected() {
    assert_eq!(result_of("oversized"), "ValueTooLarge(2097152)");
}

#[test]
fn declared_output_is_produced() {
    let (summary, counted, _, harness, _) = around("send");
    assert_eq!(summary.outputs, 1);
    assert_eq!(counted, b"2");
    let out = harness.records("misbehave-out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(b"bad".as_slice()));
    assert_eq!(out[0].value.as_deref(), Some(b"send".as_slice()));
}

#[test]
fn scan_sees_store_and_batch_writes() {
    let harness = Harness::new();
    let config = config(&harness);
    harness.topic("commands", 1);

    // First run: k1 and k2 reach the store; zz is outside the prefix.
    harness.produce(
        "commands",
        &[
            (0, Some(b"k1"), Some(b"count")),
            (0, Some(b"k1"), Some(b"count")),
            (0, Some(b"k2"), Some(b"count")),
            (0, Some(b"zz"), Some(b"count")),
        ],
    );
    harness.run_to_end(&config);

    // Second run: k0 is written in the batch that scans; the scan itself
    // writes k3 and deletes k2 before listing the `k` prefix.
    harness.produce(
        "commands",
        &[
            (0, Some(b"k0"), Some(b"count")),
            (0, Some(b"x"), Some(b"scan")),
        ],
    );
    let summary = harness.run_to_end(&config);
    assert_eq!(summary.dead_letters, 0);
    let results = harness.table(&config, "results");
    assert_eq!(results[&(0, b"scan".to_vec())], b"k0=1,k1=2,k3=7");
}

#[test]
fn set_table_survives_recovery() {
    let harness = Harness::new();
    let config = config(&harness);
    harness.topic("commands", 1);

    // Three adds and a discard: four changelog operations on one set.
    harness.produce("commands", &[(0, Some(b"user"), Some(b"set"))]);
    harness.run_to_end(&config);
    let results = harness.table(&config, "results");
    assert_eq!(results[&(0, b"set".to_vec())], b"x,z");

    // Rebuilt from the changelog, the set has the same members.
    harness.delete_table_state(&config, "counts");
    harness.delete_table_state(&config, "results");
    harness.produce("commands", &[(0, Some(b"user"), Some(b"set-read"))]);
    harness.run_to_end(&config);
    let results = harness.table(&config, "results");
    assert_eq!(results[&(0, b"set-read".to_vec())], b"x,z");

    // Clearing removes each member with its own tombstone. The add and
    // discard of `y` in one commit already left one tombstone for `y`.
    harness.produce("commands", &[(0, Some(b"user"), Some(b"set-clear"))]);
    harness.run_to_end(&config);
    let results = harness.table(&config, "results");
    assert_eq!(results[&(0, b"set-clear".to_vec())], b"removed 2, left 0");
    let tombstones = harness
        .records("guards-counts-changelog")
        .into_iter()
        .filter(|r| r.value.is_none())
        .count();
    assert_eq!(tombstones, 3);
    assert_eq!(harness.table(&config, "counts").len(), 0);
}

/// Union, difference and intersection on a set table: each is a sequence
/// of member records in the changelog, so the set recovers to the same
/// members.
#[test]
fn set_operations_replay_in_order() {
    let harness = Harness::new();
    let config = config(&harness);
    harness.topic("commands", 1);
    harness.produce("commands", &[(0, Some(b"team"), Some(b"set-ops"))]);
    harness.run_to_end(&config);
    let results = harness.table(&config, "results");
    assert_eq!(
        results[&(0, b"set-ops".to_vec())],
        b"added 3, removed 1, dropped 1: a"
    );

    harness.delete_table_state(&config, "counts");
    harness.produce("commands", &[(0, Some(b"team"), Some(b"set-read"))]);
    harness.run_to_end(&config);
    let results = harness.table(&config, "results");
    assert_eq!(results[&(0, b"set-read".to_vec())], b"a");
}
