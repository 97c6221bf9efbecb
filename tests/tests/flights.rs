//! The flight-delays agent end to end on a committed sample of the flights
//! data (the first 20,000 rows of vega-datasets' flights-3m.parquet): load,
//! handle, tables, outputs and the changelog, checked against an
//! independent computation over the same file.

use serde_json::Value;
use tablehost::demo::reference::flights_reference;
use tablehost::feed::{feed, FeedOptions};
use tablehost_tests::{data, plugin, Harness};

fn config(harness: &Harness) -> tablehost::config::Config {
    harness.config(&format!(
        r#"
        app_id = "flights-test"
        [[agents]]
        name = "flight-delays"
        component = {:?}
        sources = ["flights"]
        outputs = ["long-delays"]
        tables = ["delays_by_origin"]
        [[tables]]
        name = "delays_by_origin"
        "#,
        plugin("flight-delays").display().to_string()
    ))
}

#[test]
fn flight_delays_sample_is_exact() {
    let harness = Harness::new();
    let config = config(&harness);
    let sample = data("flights-20k.parquet");

    // Load the sample into four partitions keyed by origin.
    let loaded = feed(
        &harness.kafka,
        &FeedOptions {
            path: &sample,
            format: None,
            key_field: "origin",
            topic: "flights",
            partitions: 4,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(loaded.records, 20_000);

    // Handle every record.
    let summary = harness.run_to_end(&config);
    assert_eq!(summary.events, 20_000);
    assert_eq!(summary.outputs, 207);
    assert_eq!(summary.dead_letters, 0);

    // The table matches the independent computation origin by origin.
    let table = harness.table(&config, "delays_by_origin");
    let reference = flights_reference(&sample).unwrap();
    assert_eq!(reference.origins.len(), 222);
    assert_eq!(table.len(), 222);
    for ((_, key), value) in &table {
        let origin = String::from_utf8(key.clone()).unwrap();
        let expected = reference.origins[&origin];
        let actual: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(
            actual,
            serde_json::json!({"flights": expected.flights, "delay_total": expected.delay_total, "delay_max": expected.delay_max}),
            "origin {origin}"
        );
    }

    // Two origins checked against figures computed with pyarrow.
    let value_of = |origin: &str| {
        let found = table
            .iter()
            .find(|((_, k), _)| k == origin.as_bytes())
            .map(|(_, v)| v.clone());
        String::from_utf8(found.expect("origin is in the table")).unwrap()
    };
    assert_eq!(
        value_of("ATL"),
        r#"{"flights":714,"delay_total":23999,"delay_max":236}"#
    );
    assert_eq!(
        value_of("LAS"),
        r#"{"flights":460,"delay_total":6028,"delay_max":368}"#
    );

    // Every flight delayed by 180 minutes or more is in long-delays, keyed by origin.
    let long_delays = harness.records("long-delays");
    assert_eq!(long_delays.len() as u64, reference.long_delays);
    assert_eq!(long_delays.len(), 207);
    for record in &long_delays {
        let flight: Value = serde_json::from_slice(record.value.as_ref().unwrap()).unwrap();
        assert!(flight["delay"].as_i64().unwrap() >= 180, "{flight}");
        assert_eq!(
            record.key.as_deref(),
            Some(flight["origin"].as_str().unwrap().as_bytes())
        );
    }

    // The changelog contains the same final value per key as the table.
    let changelog = harness.records("flights-test-delays_by_origin-changelog");
    let mut last = std::collections::BTreeMap::new();
    for record in changelog {
        last.insert(record.key.unwrap(), record.value);
    }
    assert_eq!(last.len(), 222);
    for ((_, key), value) in &table {
        assert_eq!(last[key].as_ref(), Some(value));
    }
}
