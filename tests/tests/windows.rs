//! Windowed tables with the `windowed-counter` agent: which windows an
//! event counts in, when windows close, and how recovery keeps closing
//! them.

use std::collections::BTreeMap;

use tablehost::config::{Config, WindowConfig, WindowKind};
use tablehost::table::window::{Window, WindowSpec, STREAM_TIME_KEY};
use tablehost_tests::{counter_app, plugin, Harness, TestRecord};

fn config(harness: &Harness, window: &str, batch_size: usize) -> Config {
    harness.config(&format!(
        r#"
        app_id = "windows"
        batch_size = {batch_size}
        [[agents]]
        name = "windowed-counter"
        component = {:?}
        sources = ["events"]
        outputs = ["window-closes"]
        tables = ["window-counts"]
        [[tables]]
        name = "window-counts"
        [tables.window]
        time_field = "ts"
        {window}
        "#,
        plugin("windowed-counter").display().to_string()
    ))
}

/// Returns `(key, start, end, count)` of every window-close record.
fn closes(harness: &Harness) -> Vec<(String, i64, i64, u64)> {
    let mut out: Vec<_> = harness
        .records("window-closes")
        .iter()
        .map(|record| {
            let value: serde_json::Value =
                serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
            (
                value["key"].as_str().unwrap().to_owned(),
                value["start"].as_i64().unwrap(),
                value["end"].as_i64().unwrap(),
                value["count"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Returns the open windows in the table as `(key, window) -> count`, and
/// the stream time per partition.
fn open_windows(
    harness: &Harness,
    config: &Config,
    spec: &WindowSpec,
) -> (BTreeMap<(String, Window), u64>, BTreeMap<u32, i64>) {
    let mut windows = BTreeMap::new();
    let mut stream_times = BTreeMap::new();
    for ((partition, stored), value) in harness.table(config, "window-counts") {
        if stored == STREAM_TIME_KEY {
            stream_times.insert(partition, i64::from_be_bytes(value.try_into().unwrap()));
            continue;
        }
        let (key, window) = spec.parse_store_key(&stored).expect("a window key");
        let count = std::str::from_utf8(&value).unwrap().parse().unwrap();
        windows.insert((String::from_utf8(key).unwrap(), window), count);
    }
    (windows, stream_times)
}

fn event(ts: i64) -> Vec<u8> {
    format!(r#"{{"ts": {ts}}}"#).into_bytes()
}

fn produce_times(harness: &Harness, partition: i32, key: &[u8], times: &[i64]) {
    let values: Vec<Vec<u8>> = times.iter().map(|t| event(*t)).collect();
    let records: Vec<TestRecord<'_>> = values
        .iter()
        .map(|v| (partition, Some(key), Some(v.as_slice())))
        .collect();
    harness.produce("events", &records);
}

const HOPPING: &str = "type = \"hopping\"\nsize_ms = 10000\nstep_ms = 5000";

/// Hopping windows of 10 s every 5 s, fed one event every 2 s. A window
/// contains the events from its start up to, not including, its end, so
/// none counts more than 5. The result is the same whether events arrive
/// in one batch or one by one.
#[test]
fn hopping_windows_count_at_most_five_events() {
    let spec = WindowSpec::new(&WindowConfig {
        kind: WindowKind::Hopping,
        size_ms: 10_000,
        step_ms: Some(5_000),
        expires_ms: 0,
        time_field: Some("ts".into()),
    });
    let times: Vec<i64> = (0..30).map(|i| i * 2_000).collect();
    let count_in = |start: i64| {
        times
            .iter()
            .filter(|t| **t >= start && **t < start + 10_000)
            .count() as u64
    };

    // Windows whose end is at or before the last event time, 58 s, closed.
    let expected_closes: Vec<_> = (-1..=9)
        .map(|i| {
            let start = i * 5_000;
            ("k".to_owned(), start, start + 10_000, count_in(start))
        })
        .collect();
    assert_eq!(expected_closes[0].3, 3);
    assert!(expected_closes[1..].iter().all(|c| c.3 == 5));

    for batch_size in [512, 1] {
        let harness = Harness::new();
        let config = config(&harness, HOPPING, batch_size);
        harness.topic("events", 1);
        produce_times(&harness, 0, b"k", &times);
        let summary = harness.run_to_end(&config);
        assert_eq!(summary.windows_closed, 11, "batch size {batch_size}");
        assert_eq!(closes(&harness), expected_closes, "batch size {batch_size}");

        let (open, stream_times) = open_windows(&harness, &config, &spec);
        let expected_open: BTreeMap<_, _> = [
            (
                (
                    "k".to_owned(),
                    Window {
                        start: 50_000,
                        end: 60_000,
                    },
                ),
                5,
            ),
            (
                (
                    "k".to_owned(),
                    Window {
                        start: 55_000,
                        end: 65_000,
                    },
                ),
                2,
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(open, expected_open, "batch size {batch_size}");
        assert_eq!(stream_times, [(0, 58_000)].into_iter().collect());
    }
}

const TUMBLING: &str = "type = \"tumbling\"\nsize_ms = 10000\nexpires_ms = 5000";

/// Events of the first phase, per partition and key.
const FIRST: &[(i32, &[u8], &[i64])] = &[
    (0, b"a", &[1_000, 5_000, 12_000, 18_000, 21_000, 29_000]),
    (1, b"b", &[2_000, 14_000, 3_000, 31_000]),
    (1, b"c", &[33_000]),
];
/// Events of the second phase: a late event for an open window (26 s for
/// `a`), a late one for a closed window (12 s for `a`), and later ones.
const SECOND: &[(i32, &[u8], &[i64])] = &[
    (0, b"a", &[26_000, 36_000, 12_000, 41_000, 47_000]),
    (1, b"b", &[44_000, 38_000]),
    (1, b"c", &[52_000]),
];

fn produce_phase(harness: &Harness, phase: &[(i32, &[u8], &[i64])]) {
    for (partition, key, times) in phase {
        produce_times(harness, *partition, key, times);
    }
}

/// Tumbling windows with 5 s of lateness close once each with their final
/// count, and late events count while their window is open. A table
/// recovered from its changelog halfway closes the same windows with the
/// same counts as one that never restarted.
#[test]
fn tumbling_windows_close_once_across_recovery() {
    let spec = WindowSpec::new(&WindowConfig {
        kind: WindowKind::Tumbling,
        size_ms: 10_000,
        step_ms: None,
        expires_ms: 5_000,
        time_field: Some("ts".into()),
    });

    // The reference: both phases in one run.
    let reference = Harness::new();
    let reference_config = config(&reference, TUMBLING, 512);
    reference.topic("events", 2);
    produce_phase(&reference, FIRST);
    produce_phase(&reference, SECOND);
    reference.run_to_end(&reference_config);
    let expected_closes = closes(&reference);
    let expected_open = open_windows(&reference, &reference_config, &spec);

    let w = |start: i64| Window {
        start,
        end: start + 10_000,
    };
    let a_closes: Vec<_> = expected_closes
        .iter()
        .filter(|c| c.0 == "a")
        .cloned()
        .collect();
    assert_eq!(
        a_closes,
        vec![
            ("a".to_owned(), 0, 10_000, 2),
            ("a".to_owned(), 10_000, 20_000, 2),
            ("a".to_owned(), 20_000, 30_000, 3),
            ("a".to_owned(), 30_000, 40_000, 1),
        ]
    );
    assert_eq!(expected_open.0[&("a".to_owned(), w(40_000))], 2);
    assert_eq!(
        expected_open.1,
        [(0, 47_000), (1, 52_000)].into_iter().collect()
    );

    // The same events in two runs, with the table's state deleted between
    // them, so the second run recovers it from the changelog.
    let harness = Harness::new();
    let config = config(&harness, TUMBLING, 512);
    harness.topic("events", 2);
    produce_phase(&harness, FIRST);
    harness.run_to_end(&config);
    harness.delete_table_state(&config, "window-counts");
    produce_phase(&harness, SECOND);
    let summary = harness.run_to_end(&config);
    assert!(summary.recoveries.iter().any(|r| r.replayed > 0));

    assert_eq!(closes(&harness), expected_closes);
    assert_eq!(open_windows(&harness, &config, &spec), expected_open);
}

/// An agent that opens a windowed table as a plain table gets an error
/// naming the table's kind, and its events go to the dead-letter topic.
#[test]
fn windowed_table_opened_as_table_is_refused() {
    let harness = Harness::new();
    let config = harness.config(&counter_app(
        "kinds",
        "",
        "[tables.window]\ntype = \"tumbling\"\nsize_ms = 1000",
    ));
    harness.topic("events", 1);
    harness.produce("events", &[(0, Some(b"k"), Some(b"1"))]);
    let summary = harness.run_to_end(&config);
    assert_eq!(summary.dead_letters, 1);
    let dead = harness.records("kinds-counter-dead-letters");
    let error = dead[0].header("tablehost-error").unwrap();
    assert!(error.contains("table kind \"windowed\""), "{error}");
}

/// The window reads through the agent: the event's current window, one
/// 10 s earlier, the wall-clock window and the windows of the last minute.
#[test]
fn window_reads_of_a_key() {
    let harness = Harness::new();
    let config = config(
        &harness,
        "type = \"tumbling\"\nsize_ms = 10000\nexpires_ms = 30000",
        512,
    );
    let config = {
        // The report topic is an output too.
        let mut config = config;
        config.agents[0].outputs.push("window-reports".into());
        config
    };
    harness.topic("events", 1);
    produce_times(&harness, 0, b"k", &[1_000, 2_000, 12_000, 25_000]);
    produce_times(&harness, 0, b"report:k", &[26_000]);
    harness.run_to_end(&config);

    let reports = harness.records("window-reports");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].key.as_deref(), Some(b"k".as_slice()));
    assert_eq!(
        std::str::from_utf8(reports[0].value.as_deref().unwrap()).unwrap(),
        r#"{"key":"k","time":26000,"current":1,"delta":1,"now":null,"range":[[0,10000,2],[10000,20000,1],[20000,30000,1]]}"#
    );
    // Nothing has closed: the oldest window closes at stream time 40 s.
    assert_eq!(closes(&harness), vec![]);
}
