//! Recovery and durability with the counting agent: rebuilding a deleted
//! store, replaying only the changelog tail, crashing before a commit,
//! binary keys and deletes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tablehost::worker::{run, RunOptions, Shutdown};
use tablehost_tests::{counter_app, Harness, TestRecord};

const CHANGELOG: &str = "counting-counts-changelog";

fn config(harness: &Harness, commit_interval_ms: u64) -> tablehost::config::Config {
    harness.config(&counter_app(
        "counting",
        &format!("commit_interval_ms = {commit_interval_ms}"),
        "",
    ))
}

fn count(value: &[u8]) -> u64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}

#[test]
fn recovery_rebuilds_deleted_store() {
    let harness = Harness::new();
    let config = config(&harness, 200);
    harness.topic("events", 3);
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let mut records = Vec::new();
    for round in 0..10 {
        for (i, key) in keys.iter().enumerate() {
            records.push((
                (i % 3) as i32,
                Some(key.as_bytes()),
                format!("event {round}").into_bytes(),
            ));
        }
    }
    let records: Vec<TestRecord<'_>> = records
        .iter()
        .map(|(p, k, v)| (*p, *k, Some(v.as_slice())))
        .collect();
    harness.produce("events", &records);

    // First run: 300 events, 10 per key.
    let first = harness.run_to_end(&config);
    assert_eq!(first.events, 300);
    let before = harness.table(&config, "counts");
    assert_eq!(before.len(), 30);
    assert!(before.values().all(|v| count(v) == 10));

    // Delete the store; the next start replays the whole changelog.
    harness.delete_table_state(&config, "counts");
    let second = harness.run_to_end(&config);
    assert_eq!(second.events, 0);
    let replayed: u64 = second.recoveries.iter().map(|r| r.replayed).sum();
    assert_eq!(replayed, first.changelog_records);
    assert_eq!(second.recoveries.len(), 3);
    assert_eq!(harness.table(&config, "counts"), before);
}

#[test]
fn restart_replays_only_changelog_tail() {
    let harness = Harness::new();
    // One commit per run, at its end, so the changelog grows by one record
    // per key touched in a run.
    let config = config(&harness, 600_000);
    harness.topic("events", 1);
    let first_batch: Vec<TestRecord<'_>> = ["a", "b", "c", "d", "a", "b"]
        .iter()
        .map(|k| (0, Some(k.as_bytes()), Some(&b"x"[..])))
        .collect();
    harness.produce("events", &first_batch);
    let first = harness.run_to_end(&config);
    assert_eq!(first.events, 6);
    assert_eq!(first.changelog_records, 4);
    assert_eq!(harness.persisted_offset(&config, "counts", 0), Some(4));

    // Keep a copy of the store as it is after the first run.
    let state = config.state_dir();
    let snapshot = harness.dir.path().join("snapshot");
    copy_dir(&state.join("tables"), &snapshot);

    // A clean restart replays nothing; the second run adds two changelog records.
    harness.produce(
        "events",
        &[
            (0, Some(b"a"), Some(b"x")),
            (0, Some(b"b"), Some(b"x")),
            (0, Some(b"a"), Some(b"x")),
        ],
    );
    let second = harness.run_to_end(&config);
    assert_eq!(second.recoveries.len(), 1);
    assert_eq!(second.recoveries[0].replayed, 0);
    assert_eq!(second.events, 3);
    assert_eq!(second.changelog_records, 2);
    let expected = harness.table(&config, "counts");

    // Put the old store back: the next start replays exactly the two-record tail.
    std::fs::remove_dir_all(state.join("tables")).unwrap();
    copy_dir(&snapshot, &state.join("tables"));
    let third = harness.run_to_end(&config);
    assert_eq!(third.events, 0);
    assert_eq!(third.recoveries[0].from_offset, 4);
    assert_eq!(third.recoveries[0].to_offset, 6);
    assert_eq!(third.recoveries[0].replayed, 2);
    let table = harness.table(&config, "counts");
    assert_eq!(table, expected);
    assert_eq!(count(&table[&(0, b"a".to_vec())]), 4);
    assert_eq!(count(&table[&(0, b"b".to_vec())]), 3);
}

#[test]
fn stop_without_commit_loses_nothing() {
    let harness = Harness::new();
    let config = config(&harness, 600_000);
    harness.topic("events", 2);
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut records = Vec::new();
    for _ in 0..200 {
        for (i, key) in keys.iter().enumerate() {
            records.push(((i % 2) as i32, Some(key.as_bytes()), Some(&b"x"[..])));
        }
    }
    harness.produce("events", &records);

    // Abort, as a crash would, once some events are handled and before any commit.
    let shutdown = Arc::new(Shutdown::default());
    let handled = Arc::new(AtomicU64::new(0));
    let worker = {
        let (config, kafka, shutdown, handled) = (
            config.clone(),
            harness.kafka.clone(),
            shutdown.clone(),
            handled.clone(),
        );
        std::thread::spawn(move || {
            run(
                &config,
                kafka,
                shutdown,
                RunOptions {
                    events_handled: Some(handled),
                    ..Default::default()
                },
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no event was handled within 120 seconds"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    shutdown.abort();
    let aborted = worker.join().unwrap().unwrap();
    assert!(aborted.events > 0);
    assert_eq!(aborted.commits, 0);
    assert_eq!(harness.records(CHANGELOG).len(), 0);

    // The next run handles every event again and the counts are exact.
    let rerun = harness.run_to_end(&config);
    assert_eq!(rerun.events, 2000);
    let table = harness.table(&config, "counts");
    assert_eq!(table.len(), 10);
    for ((_, key), value) in &table {
        assert_eq!(count(value), 200, "key {}", String::from_utf8_lossy(key));
    }
}

#[test]
fn binary_and_empty_keys_survive_restart() {
    let harness = Harness::new();
    let config = config(&harness, 1000);
    harness.topic("events", 1);
    let binary: &[u8] = &[0xff, 0x00, 0xfe];
    harness.produce(
        "events",
        &[
            (0, Some(binary), Some(b"x")),
            (0, Some(b""), Some(b"x")),
            (0, Some(binary), Some(b"x")),
            (0, None, Some(b"x")),
            (0, Some(binary), Some(b"x")),
        ],
    );
    harness.run_to_end(&config);
    let expected: std::collections::BTreeMap<(u32, Vec<u8>), Vec<u8>> = [
        ((0, binary.to_vec()), b"3".to_vec()),
        ((0, Vec::new()), b"2".to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(harness.table(&config, "counts"), expected);

    // A restart keeps the bytes; so does a rebuild from the changelog.
    harness.run_to_end(&config);
    assert_eq!(harness.table(&config, "counts"), expected);
    harness.delete_table_state(&config, "counts");
    let rebuilt = harness.run_to_end(&config);
    assert_eq!(rebuilt.recoveries[0].replayed, 2);
    assert_eq!(harness.table(&config, "counts"), expected);
}

#[test]
fn delete_is_tombstone_after_recovery() {
    let harness = Harness::new();
    let config = config(&harness, 600_000);
    harness.topic("events", 1);
    harness.produce(
        "events",
        &[
            (0, Some(b"gone"), Some(b"x")),
            (0, Some(b"kept"), Some(b"x")),
        ],
    );
    harness.run_to_end(&config);
    harness.produce("events", &[(0, Some(b"gone"), Some(b"delete"))]);
    harness.run_to_end(&config);

    // The changelog ends with a tombstone for the deleted key.
    let changelog = harness.records(CHANGELOG);
    let last_gone = changelog
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(b"gone".as_slice()))
        .unwrap();
    assert_eq!(last_gone.value, None);
    assert_eq!(changelog.len(), 3);

    // The key stays deleted in the store and after a rebuild.
    let expected: std::collections::BTreeMap<(u32, Vec<u8>), Vec<u8>> =
        [((0, b"kept".to_vec()), b"1".to_vec())]
            .into_iter()
            .collect();
    assert_eq!(harness.table(&config, "counts"), expected);
    harness.delete_table_state(&config, "counts");
    harness.run_to_end(&config);
    assert_eq!(harness.table(&config, "counts"), expected);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Fills a one-partition changelog until the embedded cluster drops its
/// oldest records, and returns the table over an empty memory store with
/// the partition's watermarks.
fn changelog_with_dropped_head(harness: &Harness) -> (tablehost::table::Table, i64, i64) {
    use tablehost::kafka::producer::TrackedProducer;
    use tablehost::kafka::TopicKind;
    harness
        .kafka
        .ensure_topic("head-t-changelog", 1, TopicKind::Changelog)
        .unwrap();
    let producer = TrackedProducer::new(&harness.kafka).unwrap();
    let value = vec![b'v'; 100];
    for i in 0..80_000 {
        let key = format!("key-{i:06}");
        producer
            .send(
                "head-t-changelog",
                Some(0),
                Some(key.as_bytes()),
                Some(&value),
                &[],
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let (low, high) = harness.kafka.watermarks("head-t-changelog", 0).unwrap();
    assert_eq!(high, 80_000);
    assert!(low > 0, "the embedded cluster kept the whole changelog");
    let store = Arc::new(tablehost::store::MemoryStore::new());
    let table = tablehost::table::Table::new("t", "head-t-changelog", store);
    (table, low, high)
}

/// A changelog whose low watermark is above zero. A new store gets an
/// error that names the offset. A store whose persisted offset is below the
/// low watermark replays from the low watermark, and a store past it
/// replays exactly the rest.
#[test]
fn recovery_with_low_watermark_above_zero() {
    use tablehost::recovery::recover_partition;
    let harness = Harness::new();
    let (table, low, high) = changelog_with_dropped_head(&harness);

    let error = recover_partition(&harness.kafka, &table, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "recovery: changelog head-t-changelog partition 0 starts at offset {low}, so the \
             embedded cluster has dropped older records and the table cannot be rebuilt; run \
             against a real broker"
        )
    );

    table.store().apply_changelog(0, &[], low - 1, &[]).unwrap();
    let report = recover_partition(&harness.kafka, &table, 0).unwrap();
    assert_eq!(report.from_offset, low);
    assert_eq!(report.replayed as i64, high - low);
    assert_eq!(table.store().changelog_offset(0).unwrap(), Some(high));

    table.store().drop_partition(0).unwrap();
    let persisted = low + 100;
    table
        .store()
        .apply_changelog(0, &[], persisted, &[])
        .unwrap();
    let report = recover_partition(&harness.kafka, &table, 0).unwrap();
    assert_eq!(report.from_offset, persisted);
    assert_eq!(report.to_offset, high);
    assert_eq!(report.replayed as i64, high - persisted);
    let keys = table.store().iter(0).unwrap().count() as i64;
    assert_eq!(keys, high - persisted);
    let first = format!("key-{persisted:06}");
    assert!(table.store().get(0, first.as_bytes()).unwrap().is_some());
    assert_eq!(table.store().changelog_offset(0).unwrap(), Some(high));
}

/// Appends a transaction commit marker (a control batch) to a partition by
/// sending a Produce request (version 3) straight to the embedded
/// cluster's only broker. librdkafka's mock stores the batch as sent and
/// writes no markers of its own, and rdkafka cannot produce control
/// records, so this is how a changelog that ends in markers arises here.
fn append_commit_marker(bootstrap: &str, topic: &str, partition: i32) {
    use std::io::{Read, Write};

    // The control record: key (version 0, type 1 = commit), value (version
    // 0, coordinator epoch 0), no headers; lengths are zigzag varints.
    let key = [0u8, 0, 0, 1];
    let value = [0u8, 0, 0, 0, 0, 0];
    let mut record = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
    record.push((key.len() as u8) << 1);
    record.extend_from_slice(&key);
    record.push((value.len() as u8) << 1);
    record.extend_from_slice(&value);
    record.push(0); // no headers
    let mut records = vec![(record.len() as u8) << 1];
    records.extend_from_slice(&record);

    // The batch from `attributes` on, which the CRC covers.
    let mut body = Vec::new();
    body.extend_from_slice(&0x30i16.to_be_bytes()); // transactional and control
    body.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    body.extend_from_slice(&0i64.to_be_bytes()); // base timestamp
    body.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
    body.extend_from_slice(&7i64.to_be_bytes()); // producer id
    body.extend_from_slice(&0i16.to_be_bytes()); // producer epoch
    body.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    body.extend_from_slice(&1i32.to_be_bytes()); // record count
    body.extend_from_slice(&records);

    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
    batch.extend_from_slice(&((4 + 1 + 4 + body.len()) as i32).to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&body).to_be_bytes());
    batch.extend_from_slice(&body);

    let mut request = Vec::new();
    request.extend_from_slice(&0i16.to_be_bytes()); // Produce
    request.extend_from_slice(&3i16.to_be_bytes()); // version 3
    request.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    request.extend_from_slice(&4i16.to_be_bytes());
    request.extend_from_slice(b"test");
    request.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    request.extend_from_slice(&(-1i16).to_be_bytes()); // acks = all
    request.extend_from_slice(&10_000i32.to_be_bytes()); // timeout
    request.extend_from_slice(&1i32.to_be_bytes()); // one topic
    request.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    request.extend_from_slice(topic.as_bytes());
    request.extend_from_slice(&1i32.to_be_bytes()); // one partition
    request.extend_from_slice(&partition.to_be_bytes());
    request.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    request.extend_from_slice(&batch);

    let address = bootstrap.split(',').next().unwrap();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&request).unwrap();

    // Response: size, correlation id, topics, topic name, partitions,
    // partition, error code, ...
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(error, 0, "the cluster rejected the marker batch");
}

/// Computes CRC-32C (Castagnoli), the checksum of Kafka record batches.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A changelog whose last offsets are transaction markers: the high
/// watermark lies past the last data record, recovery still ends at once,
/// and the store records the high watermark as applied.
#[test]
fn recovery_of_changelog_ending_in_markers() {
    use tablehost::kafka::producer::TrackedProducer;
    use tablehost::kafka::TopicKind;
    use tablehost::recovery::recover_partition;

    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    let harness = Harness::new();
    let topic = "markers-t-changelog";
    harness
        .kafka
        .ensure_topic(topic, 1, TopicKind::Changelog)
        .unwrap();
    let producer = TrackedProducer::new(&harness.kafka).unwrap();
    for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")] {
        producer
            .send(topic, Some(0), Some(key), Some(value), &[])
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    append_commit_marker(&harness.kafka.bootstrap_servers(), topic, 0);
    append_commit_marker(&harness.kafka.bootstrap_servers(), topic, 0);
    assert_eq!(harness.kafka.watermarks(topic, 0).unwrap(), (0, 5));

    let store = Arc::new(tablehost::store::MemoryStore::new());
    let table = tablehost::table::Table::new("t", topic, store);
    // Recovery that waited for records up to the high watermark would
    // stall and fail here instead of returning.
    let report = recover_partition(&harness.kafka, &table, 0).unwrap();
    assert_eq!(report.replayed, 3);
    assert_eq!(report.to_offset, 5);
    assert_eq!(table.store().get(0, b"a").unwrap(), Some(b"3".to_vec()));
    assert_eq!(table.store().get(0, b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(table.store().changelog_offset(0).unwrap(), Some(5));
}
