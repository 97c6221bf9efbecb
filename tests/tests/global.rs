//! Global tables: every worker has every key, whichever worker wrote it.

use std::collections::BTreeMap;

use tablehost::config::Config;
use tablehost_tests::{plugin, Broker, Harness};

const KEYS: usize = 300_000;
const PARTITIONS: u32 = 12;

fn worker_config(harness: &Harness, worker: &str) -> Config {
    harness.worker_config(
        worker,
        &format!(
            r#"
            app_id = "global"
            [[agents]]
            name = "counter"
            component = {:?}
            sources = ["keys"]
            tables = ["counts"]
            [[tables]]
            name = "counts"
            kind = "global"
            "#,
            plugin("counter").display().to_string()
        ),
    )
}

/// Three workers share the source; each one's copy of the global table
/// ends with all 300,000 keys, written by all three.
#[test]
fn three_workers_hold_the_same_global_keys() {
    three_workers_share_keys(&Harness::new(), KEYS);
}

/// The same against a tansu broker process, with fewer keys because its
/// SQLite storage writes each record to disk.
#[test]
fn global_keys_on_a_real_broker() {
    let broker = Broker::start();
    three_workers_share_keys(&Harness::with_brokers(&broker.bootstrap()), 20_000);
}

fn three_workers_share_keys(harness: &Harness, count: usize) {
    harness.topic("keys", PARTITIONS);
    let keys: Vec<String> = (0..count).map(|i| format!("key-{i:06}")).collect();
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            (
                (i % PARTITIONS as usize) as i32,
                Some(key.as_bytes()),
                Some(b"1".as_slice()),
            )
        })
        .collect();
    harness.produce("keys", &records);

    let configs: Vec<Config> = ["worker-a", "worker-b", "worker-c"]
        .iter()
        .map(|name| worker_config(harness, name))
        .collect();
    let workers: Vec<_> = configs.iter().map(|c| harness.start_worker(c)).collect();
    harness.wait_committed_to_end("global", "keys");
    let summaries: Vec<_> = workers.into_iter().map(|w| w.stop()).collect();

    // The group split the work: every event was handled once, and more
    // than one worker handled some.
    let handled: Vec<u64> = summaries.iter().map(|s| s.events).collect();
    assert_eq!(handled.iter().sum::<u64>(), count as u64, "{handled:?}");
    assert!(
        handled.iter().filter(|n| **n > 0).count() >= 2,
        "one worker handled every event: {handled:?}"
    );

    let expected: BTreeMap<Vec<u8>, Vec<u8>> = keys
        .iter()
        .map(|k| (k.as_bytes().to_vec(), b"1".to_vec()))
        .collect();
    for config in &configs {
        let stored: BTreeMap<Vec<u8>, Vec<u8>> = harness
            .table(config, "counts")
            .into_iter()
            .map(|((_, key), value)| (key, value))
            .collect();
        assert_eq!(stored.len(), count, "{}", config.state_dir().display());
        assert!(
            stored == expected,
            "{} holds other keys or values",
            config.state_dir().display()
        );
    }
}
