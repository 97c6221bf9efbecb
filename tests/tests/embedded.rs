//! The embedded cluster's retention guard seen from a whole run: a loader
//! feeding more data than the cluster retains per partition, while the
//! worker consumes it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tablehost::feed::{feed, FeedOptions};
use tablehost::worker::{run, RunOptions, Shutdown};
use tablehost_tests::{counter_app, Harness};

#[test]
fn long_commit_interval_does_not_stall_loader() {
    let harness = Harness::new();
    // With commits only every ten minutes, the loader would wait for room
    // until it gave up, unless the worker commits early when its backlog
    // nears the retained window.
    let config = harness.config(&counter_app("paced", "commit_interval_ms = 600000", ""));

    // About 9 MB for one partition, almost twice what the cluster retains.
    let input = harness.dir.path().join("events.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..60_000 {
        writeln!(
            file,
            r#"{{"id":"k{:02}","padding":"{}"}}"#,
            i % 100,
            "x".repeat(40)
        )
        .unwrap();
    }
    file.flush().unwrap();
    drop(file);
    harness.topic("events", 1);

    let ends = Arc::new(Mutex::new(None));
    let loader = {
        let (kafka, ends, input) = (harness.kafka.clone(), ends.clone(), input.clone());
        std::thread::spawn(move || {
            let options = FeedOptions {
                path: &input,
                format: None,
                key_field: "id",
                topic: "events",
                partitions: 1,
                progress: false,
            };
            let summary = feed(&kafka, &options).unwrap();
            *ends.lock().unwrap() = Some(summary.end_offsets);
            summary.records
        })
    };
    let options = RunOptions {
        stop_at_end: true,
        end_offsets: Some(ends),
        ..Default::default()
    };
    let summary = run(
        &config,
        harness.kafka.clone(),
        Arc::new(Shutdown::default()),
        options,
    )
    .unwrap();
    assert_eq!(loader.join().unwrap(), 60_000);

    assert_eq!(summary.events, 60_000);
    assert!(summary.commits >= 3, "{} commits", summary.commits);
    let table = harness.table(&config, "counts");
    assert_eq!(table.len(), 100);
    for ((_, key), value) in &table {
        assert_eq!(value, b"600", "key {}", String::from_utf8_lossy(key));
    }
}
