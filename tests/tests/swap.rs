//! Hot swap and rollback of an agent's version while records arrive.
//!
//! Every event carries a key of its own, so the `counts` table shows
//! whether each offset was handled exactly once: a count of 2 means an
//! event handled twice, a missing key an event skipped. The `misbehave`
//! component counts `count` records like `counter` does and traps on
//! `trap` records, so it serves as a second version that behaves the
//! same, or as a broken one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tablehost::agent::{AgentNotice, AgentRuntime, AgentVersion};
use tablehost::config::{Limits, Rollout};
use tablehost::control::{Command, Control};
use tablehost::kafka::producer::TrackedProducer;
use tablehost::worker::RunOptions;
use tablehost_tests::{counter_app, plugin, Harness, Worker, RUN_TIMEOUT};

const PARTITIONS: u32 = 4;

/// Produces `total` records to `events` in chunks, each with key `e<n>`
/// and value `value`, pausing between chunks so the worker runs alongside.
fn produce(harness: &Harness, total: usize, value: &'static [u8]) -> std::thread::JoinHandle<()> {
    let kafka = harness.kafka.clone();
    std::thread::spawn(move || {
        let producer = TrackedProducer::new(&kafka).expect("producer");
        for chunk in (0..total).collect::<Vec<_>>().chunks(1_000) {
            for &n in chunk {
                let key = format!("e{n}");
                producer
                    .send(
                        "events",
                        Some((n % PARTITIONS as usize) as i32),
                        Some(key.as_bytes()),
                        Some(value),
                        &[],
                    )
                    .expect("record is queued");
            }
            producer
                .flush(Duration::from_secs(30))
                .expect("records are acknowledged");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn version(runtime: &AgentRuntime, plugin_name: &str, label: &str) -> Arc<AgentVersion> {
    let bytes = std::fs::read(plugin(plugin_name)).expect("component is readable");
    runtime
        .prepare("counter", label, &bytes)
        .expect("version prepares")
}

fn swap(control: &Control, version: &Arc<AgentVersion>, probation_events: u64) {
    control.send(Command::Swap {
        agent: "counter".into(),
        version: version.clone(),
        rollout: Rollout {
            probation_events,
            max_trap_share: 0.1,
        },
        limits: Limits::default(),
    });
}

/// Waits for the next notice of the worker's agents.
fn next_notice(control: &Control, worker: &Worker) -> AgentNotice {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(notice) = control
            .wait_notices(Duration::from_millis(200))
            .into_iter()
            .next()
        {
            return notice;
        }
        assert!(
            Instant::now() < deadline,
            "no notice within {RUN_TIMEOUT:?}"
        );
        assert!(!worker.has_stopped(), "the worker stopped before a notice");
    }
}

/// Returns `counts` as read from the changelog, the newest value per key.
fn counts(harness: &Harness, app: &str) -> BTreeMap<Vec<u8>, u64> {
    let mut counts = BTreeMap::new();
    for record in harness.records(&format!("{app}-counts-changelog")) {
        let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
        counts.insert(record.key.unwrap(), value.parse().unwrap());
    }
    counts
}

fn each_once(total: usize) -> BTreeMap<Vec<u8>, u64> {
    (0..total)
        .map(|n| (format!("e{n}").into_bytes(), 1))
        .collect()
}

struct Setup {
    harness: Harness,
    runtime: Arc<AgentRuntime>,
    control: Arc<Control>,
    worker: Worker,
}

fn start(app: &str) -> Setup {
    let harness = Harness::new();
    harness.topic("events", PARTITIONS);
    let config = harness.config(&counter_app(app, "commit_interval_ms = 200", ""));
    let runtime =
        Arc::new(AgentRuntime::new(&config.state_dir().join("compiled")).expect("runtime starts"));
    let control = Control::new();
    let worker = harness.start_worker_with(
        &config,
        RunOptions {
            control: Some(control.clone()),
            runtime: Some(runtime.clone()),
            ..Default::default()
        },
    );
    Setup {
        harness,
        runtime,
        control,
        worker,
    }
}

/// `counter` v1 is swapped for v2 and back to v1 while records arrive.
/// Every offset is handled exactly once across the three periods, both
/// versions handle events, and the swaps replay no changelog record: the
/// only recoveries are those at the first assignment, of an empty table.
#[test]
fn swap_and_back_counts_each_event_once() {
    const TOTAL: usize = 30_000;
    let setup = start("swap");
    let (control, worker) = (&setup.control, &setup.worker);
    let v1 = version(&setup.runtime, "counter", "v1");
    let v2 = version(&setup.runtime, "misbehave", "v2");
    let producer = produce(&setup.harness, TOTAL, b"count");

    worker.wait_until("a third of the events", || {
        worker.events() > TOTAL as u64 / 3
    });
    swap(control, &v2, 100);
    match next_notice(control, worker) {
        AgentNotice::Swapped { from, to, .. } => {
            assert_eq!((from.as_str(), to.as_str()), ("config", "v2"))
        }
        other => panic!("expected the swap to v2, got {other:?}"),
    }
    let at_swap = worker.events();
    worker.wait_until("more events on v2", || worker.events() > at_swap + 3_000);
    swap(control, &v1, 100);
    match next_notice(control, worker) {
        AgentNotice::Swapped { from, to, .. } => {
            assert_eq!((from.as_str(), to.as_str()), ("v2", "v1"))
        }
        other => panic!("expected the swap back to v1, got {other:?}"),
    }

    producer.join().expect("producer thread");
    setup.harness.wait_committed_to_end("swap", "events");
    let stats = setup.control.stats.clone();
    let summary = setup.worker.stop();

    assert_eq!(summary.events, TOTAL as u64);
    assert_eq!(summary.dead_letters, 0);
    let (before, v2_events, after) = (
        stats.get("counter", "config").events,
        stats.get("counter", "v2").events,
        stats.get("counter", "v1").events,
    );
    assert_eq!(before + v2_events + after, TOTAL as u64);
    assert!(
        before > 0 && v2_events >= 3_000 && after > 0,
        "{before} {v2_events} {after}"
    );
    assert_eq!(summary.recoveries.len(), PARTITIONS as usize);
    assert_eq!(
        summary.recoveries.iter().map(|r| r.replayed).sum::<u64>(),
        0
    );
    assert_eq!(counts(&setup.harness, "swap"), each_once(TOTAL));
}

/// A version that traps on every event is rolled back once its traps pass
/// the allowed share of its probation (10% of 100 events: the 11th trap),
/// and each event it trapped on is handled again by the previous version,
/// so nothing reaches the dead-letter topic and every event counts once.
#[test]
fn trapping_version_rolls_back() {
    // `misbehave` traps on `trap`; `counter` counts any value.
    rolls_back_on("rollback-trap", b"trap");
}

/// The same for a version that returns an error on every event.
#[test]
fn failing_version_rolls_back() {
    // `misbehave` returns an error on `fail`.
    rolls_back_on("rollback-fail", b"fail");
}

/// Swaps `counter` for `misbehave` while every record's value is `value`,
/// which `misbehave` fails on, and checks the rollback.
fn rolls_back_on(app: &str, value: &'static [u8]) {
    const TOTAL: usize = 6_000;
    let setup = start(app);
    let (control, worker) = (&setup.control, &setup.worker);
    let broken = version(&setup.runtime, "misbehave", "v2");
    let producer = produce(&setup.harness, TOTAL, value);

    worker.wait_until("the first events", || worker.events() > 1_000);
    swap(control, &broken, 100);
    assert!(matches!(
        next_notice(control, worker),
        AgentNotice::Swapped { .. }
    ));
    match next_notice(control, worker) {
        AgentNotice::RolledBack {
            from, to, reason, ..
        } => {
            assert_eq!((from.as_str(), to.as_str()), ("v2", "config"));
            assert!(
                reason.starts_with(
                    "11 of its first 11 events failed, more than the allowed share 0.1"
                ),
                "{reason}"
            );
        }
        other => panic!("expected a rollback, got {other:?}"),
    }

    producer.join().expect("producer thread");
    setup.harness.wait_committed_to_end(app, "events");
    let stats = setup.control.stats.clone();
    let summary = setup.worker.stop();
    assert_eq!(summary.events, TOTAL as u64);
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(stats.get("counter", "v2").events, 0);
    assert_eq!(stats.get("counter", "config").events, TOTAL as u64);
    assert_eq!(counts(&setup.harness, app), each_once(TOTAL));
}

/// A version whose instance cannot be created (its memory limit is below
/// the component's initial memory) never handles an event: the agent
/// stays on the current version and reports why.
#[test]
fn unstartable_version_is_never_used() {
    const TOTAL: usize = 3_000;
    let setup = start("no-start");
    let (control, worker) = (&setup.control, &setup.worker);
    let other = version(&setup.runtime, "misbehave", "v2");
    let producer = produce(&setup.harness, TOTAL, b"count");

    worker.wait_until("the first events", || worker.events() > 500);
    control.send(Command::Swap {
        agent: "counter".into(),
        version: other,
        rollout: Rollout::default(),
        limits: Limits {
            memory_mib: 0,
            ..Limits::default()
        },
    });
    match next_notice(control, worker) {
        AgentNotice::RolledBack {
            from, to, reason, ..
        } => {
            assert_eq!((from.as_str(), to.as_str()), ("v2", "config"));
            assert!(
                reason.contains("version v2 failed to instantiate"),
                "{reason}"
            );
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    producer.join().expect("producer thread");
    setup.harness.wait_committed_to_end("no-start", "events");
    let stats = setup.control.stats.clone();
    let summary = setup.worker.stop();
    assert_eq!(summary.events, TOTAL as u64);
    assert_eq!(stats.get("counter", "v2").events, 0);
    assert_eq!(counts(&setup.harness, "no-start"), each_once(TOTAL));
}
