//! Standby replicas: a worker follows the changelog of partitions it does
//! not own, so taking them over replays nothing that it already has.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tablehost::config::Config;
use tablehost::kafka::producer::TrackedProducer;
use tablehost::recovery::RecoveryReport;
use tablehost_tests::{counter_app, Broker, Harness, RUN_TIMEOUT};

const PARTITIONS: i32 = 4;
const KEYS: usize = 200;

fn worker_config(harness: &Harness, worker: &str, standbys: u32) -> Config {
    harness.worker_config(
        worker,
        &counter_app(
            "standby",
            &format!("commit_interval_ms = 200\nstandby_replicas = {standbys}"),
            "",
        ),
    )
}

/// Worker A and B share the source until B stops; A takes over B's
/// partitions. Returns B's partitions, A's last recovery report of each,
/// and the final counts in the changelog.
fn fail_over(
    harness: &Harness,
    standbys: u32,
) -> (Vec<u32>, Vec<RecoveryReport>, BTreeMap<Vec<u8>, u64>, u64) {
    harness.topic("events", PARTITIONS as u32);
    let a = harness.start_worker(&worker_config(harness, "worker-a", standbys));
    let b = harness.start_worker(&worker_config(harness, "worker-b", standbys));

    // Produce until both workers have handled events, so each owns some
    // partitions.
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (kafka, produced, stop) = (harness.kafka.clone(), produced.clone(), stop.clone());
        std::thread::spawn(move || {
            let producer = TrackedProducer::new(&kafka).expect("producer");
            let mut n = 0usize;
            let deadline = Instant::now() + RUN_TIMEOUT;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for _ in 0..400 {
                    let key = format!("key-{:03}", n % KEYS);
                    let partition = (n % KEYS) as i32 % PARTITIONS;
                    producer
                        .send(
                            "events",
                            Some(partition),
                            Some(key.as_bytes()),
                            Some(b"1"),
                            &[],
                        )
                        .expect("record is queued");
                    n += 1;
                }
                producer
                    .flush(Duration::from_secs(30))
                    .expect("records are acknowledged");
                produced.store(n as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    while a.events() == 0 || b.events() == 0 {
        assert!(Instant::now() < deadline, "both workers did not get events");
        assert!(
            !a.has_stopped() && !b.has_stopped(),
            "a worker stopped early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the group settle after the second worker joined.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("producer thread");
    harness.wait_committed_to_end("standby", "events");

    let b_summary = b.stop();
    let b_partitions: Vec<u32> = {
        let mut p: Vec<u32> = b_summary.recoveries.iter().map(|r| r.partition).collect();
        p.sort();
        p.dedup();
        p
    };
    assert!(!b_partitions.is_empty(), "worker B owned no partition");

    // One more event per partition of B: A commits them only once it owns
    // those partitions.
    let keys: Vec<String> = (0..KEYS)
        .map(|k| format!("key-{k:03}"))
        .filter(|k| {
            let n: usize = k[4..].parse().unwrap();
            b_partitions.contains(&((n as i32 % PARTITIONS) as u32))
        })
        .collect();
    let records: Vec<_> = keys
        .iter()
        .map(|k| {
            let n: usize = k[4..].parse().unwrap();
            (
                (n as i32) % PARTITIONS,
                Some(k.as_bytes()),
                Some(b"1".as_slice()),
            )
        })
        .collect();
    harness.produce("events", &records);
    harness.wait_committed_to_end("standby", "events");
    let a_summary = a.stop();

    let takeovers: Vec<RecoveryReport> = b_partitions
        .iter()
        .map(|p| {
            a_summary
                .recoveries
                .iter()
                .rev()
                .find(|r| r.partition == *p)
                .expect("A recovered B's partition")
                .clone()
        })
        .collect();

    let mut counts = BTreeMap::new();
    for record in harness.records("standby-counts-changelog") {
        let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
        counts.insert(record.key.unwrap(), value.parse().unwrap());
    }
    let total = produced.load(Ordering::SeqCst) + records.len() as u64;
    (b_partitions, takeovers, counts, total)
}

fn assert_exact_counts(counts: &BTreeMap<Vec<u8>, u64>, total: u64) {
    let sum: u64 = counts.values().sum();
    assert_eq!(sum, total, "the counts add up to the events produced");
    assert_eq!(counts.len(), KEYS);
}

/// With one standby, A has followed B's partitions all along, so the
/// takeover replays no changelog record.
#[test]
fn takeover_with_standby_replays_nothing() {
    let (b_partitions, takeovers, counts, total) = fail_over(&Harness::new(), 1);
    for report in &takeovers {
        assert_eq!(report.replayed, 0, "{report:?} of B's {b_partitions:?}");
        assert_eq!(report.from_offset, report.to_offset, "{report:?}");
        assert!(report.to_offset > 0, "{report:?}");
    }
    assert_exact_counts(&counts, total);
}

/// Without standbys, A replays what B wrote to its partitions' changelogs.
#[test]
fn takeover_without_standby_replays_the_changelog() {
    let (_, takeovers, counts, total) = fail_over(&Harness::new(), 0);
    for report in &takeovers {
        assert!(report.replayed > 0, "{report:?}");
        assert_eq!(
            report.replayed as i64,
            report.to_offset - report.from_offset
        );
    }
    assert_exact_counts(&counts, total);
}

/// The same takeover with a standby against a tansu broker process, where
/// the stopped worker leaves the group at once.
#[test]
fn takeover_with_standby_on_a_real_broker() {
    let broker = Broker::start();
    let (b_partitions, takeovers, counts, total) =
        fail_over(&Harness::with_brokers(&broker.bootstrap()), 1);
    for report in &takeovers {
        assert_eq!(report.replayed, 0, "{report:?} of B's {b_partitions:?}");
    }
    assert_exact_counts(&counts, total);
}
