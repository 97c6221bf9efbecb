//! Several workers of one application share the source through the
//! consumer group, and workers join and leave while records arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use tablehost::config::Config;
use tablehost::kafka::producer::TrackedProducer;
use tablehost_tests::{counter_app, Broker, Harness, Worker};

const PARTITIONS: u32 = 8;
const KEYS: usize = 400;

fn worker_config(harness: &Harness, worker: &str) -> Config {
    harness.worker_config(
        worker,
        &counter_app("workers", "commit_interval_ms = 200", ""),
    )
}

/// Worker A starts alone, B joins, A leaves and C joins, all while a
/// producer keeps writing. Every event is handled exactly once: the
/// handled counts add up to the events produced, and the final count of
/// every key in the changelog is exact. Two workers handling a partition
/// at once would both count its events from the same state and break both.
#[test]
fn workers_join_and_leave_under_load_without_loss() {
    join_and_leave(&Harness::new(), 40, 3_000);
}

/// The same against a tansu broker process, whose group coordinator
/// handles members leaving and offset commits as Kafka's does.
#[test]
fn workers_join_and_leave_on_a_real_broker() {
    let broker = Broker::start();
    join_and_leave(&Harness::with_brokers(&broker.bootstrap()), 10, 1_000);
}

fn join_and_leave(harness: &Harness, chunks: usize, chunk_events: usize) {
    harness.topic("events", PARTITIONS);

    let producer = {
        let kafka = harness.kafka.clone();
        std::thread::spawn(move || {
            let producer = TrackedProducer::new(&kafka).expect("producer");
            for chunk in 0..chunks {
                for i in 0..chunk_events {
                    let n = chunk * chunk_events + i;
                    let key = format!("key-{:03}", n % KEYS);
                    let partition = (n % KEYS) as i32 % PARTITIONS as i32;
                    producer
                        .send(
                            "events",
                            Some(partition),
                            Some(key.as_bytes()),
                            Some(b"1"),
                            &[],
                        )
                        .expect("record is queued");
                }
                producer
                    .flush(Duration::from_secs(30))
                    .expect("records are acknowledged");
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let a = harness.start_worker(&worker_config(harness, "worker-a"));
    a.wait_until("worker A handling events", || {
        a.events() > chunk_events as u64
    });
    let b = harness.start_worker(&worker_config(harness, "worker-b"));
    b.wait_until("worker B handling events", || b.events() > 0);
    let a_summary = a.stop();
    let c = harness.start_worker(&worker_config(harness, "worker-c"));
    producer.join().expect("producer thread");
    harness.wait_committed_to_end("workers", "events");
    let rest: Vec<_> = [b, c].into_iter().map(Worker::stop).collect();

    let total = (chunks * chunk_events) as u64;
    let handled = a_summary.events + rest.iter().map(|s| s.events).sum::<u64>();
    assert_eq!(
        handled,
        total,
        "A {}, B and C {:?}",
        a_summary.events,
        rest.iter().map(|s| s.events).collect::<Vec<_>>()
    );
    assert!(rest[0].events > 0);

    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for record in harness.records("workers-counts-changelog") {
        let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
        counts.insert(record.key.unwrap(), value.parse().unwrap());
    }
    let per_key = total / KEYS as u64;
    let expected: BTreeMap<Vec<u8>, u64> = (0..KEYS)
        .map(|k| (format!("key-{k:03}").into_bytes(), per_key))
        .collect();
    assert_eq!(counts, expected);
}
