//! Global tables: every worker has every key, whichever worker wrote it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tablehost::config::Config;
use tablehost_tests::{counter_app, Broker, Harness, Worker, RUN_TIMEOUT};

const KEYS: usize = 300_000;
const PARTITIONS: u32 = 12;

fn worker_config(harness: &Harness, worker: &str) -> Config {
    harness.worker_config(worker, &counter_app("global", "", "kind = \"global\""))
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
    harness.topic("events", PARTITIONS);
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

    let configs: Vec<Config> = ["worker-a", "worker-b", "worker-c"]
        .iter()
        .map(|name| worker_config(harness, name))
        .collect();
    let workers: Vec<_> = configs.iter().map(|c| harness.start_worker(c)).collect();

    // Produce slowly until two workers handle events, so more than one
    // writes the table, then the rest at once.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut chunks = records.chunks(1_000);
    let busy = |workers: &[Worker]| workers.iter().filter(|w| w.events() > 0).count();
    for chunk in chunks.by_ref() {
        harness.produce("events", chunk);
        if busy(&workers) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a second worker never handled events"
        );
        assert!(
            workers.iter().all(|w| !w.has_stopped()),
            "a worker stopped early"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rest: Vec<_> = chunks.flatten().cloned().collect();
    harness.produce("events", &rest);
    harness.wait_committed_to_end("global", "events");
    let summaries: Vec<_> = workers.into_iter().map(Worker::stop).collect();

    // Events after a worker's last commit may be handled again by the next
    // owner of their partition, because a global table records no source
    // position. None is lost.
    let handled: Vec<u64> = summaries.iter().map(|s| s.events).collect();
    assert!(handled.iter().sum::<u64>() >= count as u64, "{handled:?}");
    assert!(
        handled.iter().filter(|n| **n > 0).count() >= 2,
        "one worker handled every event: {handled:?}"
    );

    let copies: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = configs
        .iter()
        .map(|config| {
            harness
                .table(config, "counts")
                .into_iter()
                .map(|((_, key), value)| (key, value))
                .collect()
        })
        .collect();
    let expected_keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    for (config, copy) in configs.iter().zip(&copies) {
        let present: Vec<Vec<u8>> = copy.keys().cloned().collect();
        assert_eq!(present.len(), count, "{}", config.state_dir().display());
        assert!(
            present == expected_keys,
            "{} has other keys",
            config.state_dir().display()
        );
        assert!(copy.values().all(|v| v.as_slice() != b"0"));
    }
    assert!(
        copies[0] == copies[1],
        "workers a and b hold different values"
    );
    assert!(
        copies[0] == copies[2],
        "workers a and c hold different values"
    );
}
