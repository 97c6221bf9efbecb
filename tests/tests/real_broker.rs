//! The counting agent against a real broker process: tansu with SQLite
//! storage on a loopback port. Committed offsets and changelogs live in the
//! broker, so they survive worker restarts and a broker crash, and a
//! deleted store is rebuilt from the broker's changelog.

use tablehost_tests::{plugin, Broker, Harness};

#[test]
fn broker_crash_keeps_offsets_and_changelog() {
    let mut broker = Broker::start();
    let harness = Harness::with_brokers(&broker.bootstrap());
    let config = harness.config(&format!(
        r#"
        app_id = "real"
        brokers = "{}"
        commit_interval_ms = 600000
        [[agents]]
        name = "counter"
        component = {:?}
        sources = ["events"]
        tables = ["counts"]
        [[tables]]
        name = "counts"
        "#,
        broker.bootstrap(),
        plugin("counter").display().to_string()
    ));
    harness.topic("events", 2);

    // First worker: five events, one commit at the end.
    harness.produce(
        "events",
        &[
            (0, Some(b"a"), Some(b"x")),
            (0, Some(b"a"), Some(b"x")),
            (1, Some(b"b"), Some(b"x")),
            (0, Some(b"a"), Some(b"x")),
            (1, Some(b"b"), Some(b"x")),
        ],
    );
    let first = harness.run_to_end(&config);
    assert_eq!(first.events, 5);
    assert_eq!(first.changelog_records, 2);

    // Kill the broker and start it again on the same storage: the next
    // worker handles only the new event.
    broker.restart();
    harness.produce("events", &[(0, Some(b"a"), Some(b"x"))]);
    let second = harness.run_to_end(&config);
    assert_eq!(second.events, 1);
    assert_eq!(second.recoveries.iter().map(|r| r.replayed).sum::<u64>(), 0);
    let expected: std::collections::BTreeMap<(u32, Vec<u8>), Vec<u8>> = [
        ((0, b"a".to_vec()), b"4".to_vec()),
        ((1, b"b".to_vec()), b"2".to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(harness.table(&config, "counts"), expected);

    // Delete the store: the third worker rebuilds it from the broker's
    // changelog, two records for `a` and one for `b`.
    harness.delete_table_state(&config, "counts");
    let third = harness.run_to_end(&config);
    assert_eq!(third.events, 0);
    assert_eq!(third.recoveries.iter().map(|r| r.replayed).sum::<u64>(), 3);
    assert_eq!(harness.table(&config, "counts"), expected);
    assert_eq!(harness.records("real-counts-changelog").len(), 3);
}
