//! The counting agent against a real broker process: tansu with SQLite
//! storage on a loopback port. Committed offsets and changelogs live in the
//! broker, so they survive worker restarts and a broker crash, and a
//! deleted store is rebuilt from the broker's changelog.

use tablehost::store::{RocksStore, Store};
use tablehost_tests::{counter_app, Broker, Harness};

#[test]
fn broker_crash_keeps_offsets_and_changelog() {
    let mut broker = Broker::start();
    let harness = Harness::with_brokers(&broker.bootstrap());
    let config = harness.config(&counter_app(
        "real",
        &format!(
            "brokers = {:?}\ncommit_interval_ms = 600000",
            broker.bootstrap()
        ),
        "",
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

fn counter_config(harness: &Harness, broker: &Broker, extra: &str) -> tablehost::config::Config {
    harness.config(&counter_app(
        "ahead",
        &format!("brokers = {:?}\n{extra}", broker.bootstrap()),
        "",
    ))
}

#[test]
fn store_ahead_of_changelog() {
    let broker = Broker::start();
    let harness = Harness::with_brokers(&broker.bootstrap());
    let failing = counter_config(&harness, &broker, "");
    harness.topic("events", 1);
    harness.produce(
        "events",
        &[(0, Some(b"a"), Some(b"x")), (0, Some(b"b"), Some(b"x"))],
    );
    harness.run_to_end(&failing);
    let expected = harness.table(&failing, "counts");

    // The store claims offset 10 of a changelog that ends at 2, as a store
    // kept from a changelog that was since deleted and recreated would.
    // (tansu 0.6.0 deletes every topic on DeleteTopics, so the test moves
    // the store's offset instead of recreating the topic.)
    {
        let dir = tablehost::manager::table_dir(&failing.state_dir(), "counts");
        let store = RocksStore::open("counts", &dir, &Default::default()).unwrap();
        store.apply_changelog(0, &[], 10, &[]).unwrap();
        store.persist().unwrap();
    }
    let error = tablehost::worker::run(
        &failing,
        harness.kafka.clone(),
        Default::default(),
        tablehost::worker::RunOptions {
            stop_at_end: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(
            "table counts partition 0 has applied the changelog up to offset 10, but changelog \
             ahead-counts-changelog ends at offset 2"
        ),
        "{message}"
    );
    assert!(
        message.contains("recovery.store_ahead = \"rebuild\""),
        "{message}"
    );

    // With rebuild, the state is dropped and replayed from the changelog.
    let rebuilding = counter_config(&harness, &broker, "[recovery]\nstore_ahead = \"rebuild\"");
    let rebuilt = harness.run_to_end(&rebuilding);
    assert_eq!(rebuilt.recoveries[0].from_offset, 0);
    assert_eq!(rebuilt.recoveries[0].replayed, 2);
    assert_eq!(harness.table(&rebuilding, "counts"), expected);
}

#[test]
fn changelog_created_by_hand_is_used() {
    let broker = Broker::start();
    let harness = Harness::with_brokers(&broker.bootstrap());
    let config = counter_config(&harness, &broker, "");

    // An operator created the changelog and wrote state before the first run.
    harness
        .kafka
        .ensure_topic(
            "ahead-counts-changelog",
            1,
            tablehost::kafka::TopicKind::Changelog,
        )
        .unwrap();
    harness.produce(
        "ahead-counts-changelog",
        &[(0, Some(b"a"), Some(b"40")), (0, Some(b"a"), Some(b"41"))],
    );
    harness.topic("events", 1);
    harness.produce("events", &[(0, Some(b"a"), Some(b"x"))]);

    let summary = harness.run_to_end(&config);
    assert_eq!(summary.recoveries[0].replayed, 2);
    assert_eq!(summary.events, 1);
    let table = harness.table(&config, "counts");
    assert_eq!(table[&(0, b"a".to_vec())], b"42");
}
