//! Throughput benchmarks of the whole pipeline and its parts, on the
//! flights data and on synthetic records. Run with `make bench`; the
//! results and the machine they came from are recorded in BENCHMARKS.md.
//!
//! Each measurement prints one line `name: value unit (details)`:
//!
//! - `e2e`: the flights file loaded into an 8-partition topic of the
//!   embedded cluster while the flight-delays agent handles it, events per
//!   second from the first event to the last commit;
//! - `bare`: the same file through a bare rdkafka consume-and-produce loop
//!   (no agent, no tables) on the same cluster, fed the same way;
//! - `windowed`: the same as `e2e`, into 32 partitions, with the
//!   windowed-counter agent counting flights per origin in one-hour
//!   tumbling windows of the flight's date;
//! - `recovery`: changelog records per second replayed into RocksDB, 5
//!   million records over 256 partitions;
//! - `failover`: two workers share a source until one stops. It prints the
//!   time until the other handles an event of a partition it took over, and
//!   the changelog records it replayed, without and with a standby replica;
//! - `wasm`: the cost of one component call and of one event handled by
//!   flight-delays, without Kafka;
//! - `table`: the cost of one write into a table's write cache and of one
//!   record applied to RocksDB.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use tablehost::agent::{AgentRuntime, Event};
use tablehost::config::Config;
use tablehost::feed::{feed, FeedOptions};
use tablehost::kafka::embedded::record_footprint;
use tablehost::kafka::producer::TrackedProducer;
use tablehost::kafka::{Kafka, TopicKind};
use tablehost::recovery::ChangelogReader;
use tablehost::store::{ChangelogRecord, MemoryStore, RocksOptions, RocksStore, Store};
use tablehost::table::Table;
use tablehost::worker::{run, RunOptions, Shutdown};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let data = args
        .iter()
        .position(|a| a == "--data")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .context("usage: pipeline --data build/data/flights-3m.parquet")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let component = root.join("build/plugins/flight_delays.wasm");
    anyhow::ensure!(
        component.is_file(),
        "{} is missing; run `make plugins`",
        component.display()
    );
    let scratch = tempfile::tempdir()?;

    let e2e = end_to_end(
        &data,
        &flight_delays_config(&component),
        "e2e",
        8,
        scratch.path(),
    )?;
    let bare = bare_loop(&data)?;
    println!("e2e/bare: {:.2}", e2e / bare);
    let windowed = root.join("build/plugins/windowed_counter.wasm");
    // The windows' changelog needs more partitions than 8 to fit in the
    // embedded cluster's 5 MiB per partition.
    end_to_end(
        &data,
        &windowed_config(&windowed),
        "windowed",
        32,
        scratch.path(),
    )?;
    recovery(scratch.path())?;
    let counter = root.join("build/plugins/counter.wasm");
    for standbys in [0, 1] {
        failover(&counter, standbys, scratch.path())?;
    }
    wasm_call(&component, scratch.path())?;
    table_write(scratch.path())?;
    Ok(())
}

/// Returns the agents section of the `e2e` run.
fn flight_delays_config(component: &Path) -> String {
    format!(
        "[[agents]]\nname = \"flight-delays\"\ncomponent = {:?}\n\
         sources = [\"flights\"]\noutputs = [\"long-delays\"]\ntables = [\"delays_by_origin\"]\n\
         [[tables]]\nname = \"delays_by_origin\"\n",
        component.display().to_string()
    )
}

/// Returns the agents section of the `windowed` run: flights per origin (the
/// record key) per hour of the flight's date.
fn windowed_config(component: &Path) -> String {
    format!(
        "[[agents]]\nname = \"windowed-counter\"\ncomponent = {:?}\n\
         sources = [\"flights\"]\noutputs = [\"window-closes\"]\ntables = [\"window-counts\"]\n\
         [[topics]]\nname = \"window-closes\"\npartitions = 64\n\
         [[tables]]\nname = \"window-counts\"\n\
         [tables.window]\ntype = \"tumbling\"\nsize_ms = 3600000\nexpires_ms = 3600000\ntime_field = \"date\"\n",
        component.display().to_string()
    )
}

/// Loads the flights into a topic of `partitions` partitions while the
/// agents of `agents` handle them, and returns events per second.
fn end_to_end(
    data: &Path,
    agents: &str,
    name: &str,
    partitions: u32,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let text = format!(
        "app_id = \"bench-{name}\"\nstate_dir = {:?}\n{agents}",
        scratch.join(name).display().to_string(),
    );
    let config = Config::parse(&text, Path::new("bench.toml"), scratch)?;
    let kafka = Arc::new(Kafka::embedded(Default::default())?);
    kafka.ensure_topic("flights", partitions, TopicKind::Plain)?;

    let ends = Arc::new(Mutex::new(None));
    let shutdown = Arc::new(Shutdown::default());
    let loader = {
        let (kafka, ends, data, shutdown) = (
            kafka.clone(),
            ends.clone(),
            data.to_owned(),
            shutdown.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let options = FeedOptions {
                path: &data,
                format: None,
                key_field: "origin",
                topic: "flights",
                partitions,
                progress: false,
            };
            let result = feed(&kafka, &options);
            match &result {
                Ok(summary) => *ends.lock().unwrap() = Some(summary.end_offsets.clone()),
                Err(_) => shutdown.request(),
            }
            Ok(result?.records)
        })
    };
    let options = RunOptions {
        stop_at_end: true,
        end_offsets: Some(ends),
        ..Default::default()
    };
    let summary = run(&config, kafka, shutdown, options)?;
    let records = loader.join().expect("loader thread")?;
    let rate = summary.events as f64 / summary.processing_seconds;
    println!(
        "{name}: {rate:.0} events/s ({} events of {records} loaded, {:.1} s, {} commits, {} outputs, {} windows closed)",
        summary.events, summary.processing_seconds, summary.commits, summary.outputs, summary.windows_closed
    );
    Ok(rate)
}

fn bare_loop(data: &Path) -> anyhow::Result<f64> {
    let kafka = Arc::new(Kafka::embedded(Default::default())?);
    kafka.ensure_topic("bare-in", 8, TopicKind::Plain)?;
    kafka.ensure_topic("bare-out", 8, TopicKind::Plain)?;
    let loader = {
        let (kafka, data) = (kafka.clone(), data.to_owned());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let options = FeedOptions {
                path: &data,
                format: None,
                key_field: "origin",
                topic: "bare-in",
                partitions: 8,
                progress: false,
            };
            Ok(feed(&kafka, &options)?.records)
        })
    };

    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "bare")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["bare-in"])?;
    let producer = TrackedProducer::new(&kafka)?;
    let ledger = kafka.embedded_cluster().expect("embedded").ledger();
    let expected = 3_000_000u64;
    let mut handled = 0u64;
    let mut pending: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut started = None;
    let mut last_commit = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(900);
    while handled < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message?;
            started.get_or_insert_with(Instant::now);
            producer.send(
                "bare-out",
                Some(message.partition()),
                message.key(),
                message.payload(),
                &[],
            )?;
            let entry = pending.entry(message.partition()).or_default();
            entry.0 += record_footprint(
                message.key().map_or(0, <[u8]>::len),
                message.payload().map_or(0, <[u8]>::len),
                0,
            );
            entry.1 += 1;
            handled += 1;
        }
        // Commit on time even when no record arrived, because the loader
        // may be waiting for the room a commit releases.
        if !pending.is_empty()
            && (last_commit.elapsed() > Duration::from_secs(1) || handled == expected)
        {
            // The same commit step as the worker's: outputs acknowledged,
            // then source offsets, then room for the loader.
            producer.flush(Duration::from_secs(60))?;
            consumer.commit_consumer_state(CommitMode::Sync)?;
            for (partition, (bytes, records)) in pending.drain() {
                ledger.release("bare-in", partition as u32, bytes, records);
            }
            last_commit = Instant::now();
        }
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let loaded = loader.join().expect("loader thread")?;
    anyhow::ensure!(
        handled == loaded,
        "bare loop handled {handled} of {loaded} records"
    );
    let rate = handled as f64 / seconds;
    println!("bare: {rate:.0} events/s ({handled} events, {seconds:.1} s)");
    Ok(rate)
}

fn recovery(scratch: &Path) -> anyhow::Result<()> {
    // 5 million records; 256 partitions keep each under the embedded
    // cluster's 5 MiB window.
    const PARTITIONS: u32 = 256;
    const RECORDS: u64 = 5_000_000;
    let kafka = Kafka::embedded(Default::default())?;
    let topic = "bench-recovery-changelog";
    kafka.ensure_topic(topic, PARTITIONS, TopicKind::Changelog)?;
    let producer = TrackedProducer::new(&kafka)?;
    for i in 0..RECORDS {
        let key = format!("key-{:08}", i % 1_000_000);
        let value = format!(
            "{{\"flights\":{i},\"delay_total\":{},\"delay_max\":{}}}",
            i * 7,
            i % 900
        );
        producer.send(
            topic,
            Some((i % PARTITIONS as u64) as i32),
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[],
        )?;
    }
    producer.flush(Duration::from_secs(120))?;

    let store = Arc::new(RocksStore::open(
        "bench",
        &scratch.join("recovery"),
        &RocksOptions::default(),
    )?);
    let table = Table::new("bench", topic, store);
    let started = Instant::now();
    let reader = ChangelogReader::new(&kafka)?;
    let mut replayed = 0;
    for partition in 0..PARTITIONS {
        replayed += reader
            .recover(
                &kafka,
                &table,
                partition,
                tablehost::config::StoreAhead::Fail,
            )?
            .replayed;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("recovery: {:.0} records/s ({replayed} records into RocksDB, {PARTITIONS} partitions, {seconds:.2} s)", replayed as f64 / seconds);
    Ok(())
}

/// Two workers count 400,000 keys over 16 partitions; then one stops and
/// the other takes its partitions over. Prints the time from the stop to
/// the first event the survivor handles in a taken-over partition, and the
/// survivor's time replaying changelogs. Most of the total is the embedded
/// cluster's session timeout (6 s), which it waits out before reassigning
/// a stopped member's partitions.
fn failover(component: &Path, standbys: u32, scratch: &Path) -> anyhow::Result<()> {
    const PARTITIONS: u32 = 16;
    const KEYS: u64 = 400_000;
    let kafka = Arc::new(Kafka::embedded(Default::default())?);
    kafka.ensure_topic("events", PARTITIONS, TopicKind::Plain)?;
    let config = |worker: &str| -> anyhow::Result<Config> {
        let text = format!(
            "app_id = \"failover\"\nstate_dir = {:?}\nstandby_replicas = {standbys}\n\
             [[agents]]\nname = \"counter\"\ncomponent = {:?}\nsources = [\"events\"]\ntables = [\"counts\"]\n\
             [[tables]]\nname = \"counts\"\n",
            scratch.join(format!("failover-{standbys}-{worker}")).display().to_string(),
            component.display().to_string()
        );
        Ok(Config::parse(&text, Path::new("bench.toml"), scratch)?)
    };
    let start = |config: Config| {
        let kafka = kafka.clone();
        let shutdown = Arc::new(Shutdown::default());
        let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let options = RunOptions {
            events_handled: Some(events.clone()),
            ..Default::default()
        };
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || run(&config, kafka, shutdown, options));
        (stop, events, thread)
    };
    let handled =
        |events: &std::sync::atomic::AtomicU64| events.load(std::sync::atomic::Ordering::SeqCst);
    let (stop_a, events_a, thread_a) = start(config("a")?);
    let (stop_b, events_b, thread_b) = start(config("b")?);

    let producer = TrackedProducer::new(&kafka)?;
    let send = |key: u64| -> anyhow::Result<()> {
        let key = format!("key-{key:08}");
        let partition =
            (tablehost::kafka::partitioner::murmur2(key.as_bytes()) & 0x7fff_ffff) % PARTITIONS;
        producer.send(
            "events",
            Some(partition as i32),
            Some(key.as_bytes()),
            Some(b"1"),
            &[],
        )
    };
    // Warm up until both workers handle events, so each owns partitions.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0;
    while handled(&events_a) == 0 || handled(&events_b) == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "failover: the workers did not share the source"
        );
        for _ in 0..100 {
            send(next % KEYS)?;
            next += 1;
        }
        producer.flush(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    for key in 0..KEYS {
        send(key)?;
    }
    producer.flush(Duration::from_secs(120))?;
    let total = next + KEYS;
    while handled(&events_a) + handled(&events_b) < total {
        anyhow::ensure!(
            Instant::now() < deadline + Duration::from_secs(120),
            "failover: the events were not handled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the last commit and the standby catch up.
    std::thread::sleep(Duration::from_secs(2));

    stop_b.request();
    let summary_b = thread_b.join().expect("worker thread")?;
    let stopped = Instant::now();
    let before = handled(&events_a);
    // One event per partition of B; A handles them once it owns them.
    let mut b_partitions: Vec<u32> = summary_b.recoveries.iter().map(|r| r.partition).collect();
    b_partitions.sort();
    b_partitions.dedup();
    let probe = (KEYS..)
        .find(|key| {
            let text = format!("key-{key:08}");
            let hash = tablehost::kafka::partitioner::murmur2(text.as_bytes()) & 0x7fff_ffff;
            b_partitions.contains(&(hash % PARTITIONS))
        })
        .expect("some key lands in a partition of B");
    send(probe)?;
    producer.flush(Duration::from_secs(30))?;
    while handled(&events_a) <= before {
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(120),
            "failover: no takeover"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let takeover = stopped.elapsed().as_secs_f64();
    stop_a.request();
    let summary_a = thread_a.join().expect("worker thread")?;
    let replayed: u64 = summary_a
        .recoveries
        .iter()
        .filter(|r| b_partitions.contains(&r.partition))
        .map(|r| r.replayed)
        .sum();
    println!(
        "failover (standby_replicas = {standbys}): {takeover:.2} s to the first event after the takeover, \
         {replayed} changelog records replayed in the takeover, {:.2} s in recovery over the survivor's run \
         ({} partitions taken over, {KEYS} keys)",
        summary_a.recovery_seconds,
        b_partitions.len()
    );
    Ok(())
}

fn flight_event(i: u64) -> Event {
    let origins = ["ATL", "ORD", "DFW", "LAX", "PHX", "DEN", "LAS", "SFO"];
    let origin = origins[(i % origins.len() as u64) as usize];
    let value = format!(
        "{{\"date\":\"2001-01-01 00:01:00\",\"delay\":{},\"distance\":{},\"origin\":\"{origin}\",\"destination\":\"PHL\"}}",
        (i % 300) as i64 - 20,
        200 + i % 2000
    );
    Event {
        topic: "flights".into(),
        partition: 0,
        offset: i as i64,
        timestamp_ms: Some(978_307_260_000),
        key: Some(origin.as_bytes().to_vec()),
        value: Some(value.into_bytes()),
        headers: Vec::new(),
    }
}

fn wasm_call(component: &Path, scratch: &Path) -> anyhow::Result<()> {
    let runtime = AgentRuntime::new(&scratch.join("compiled"))?;
    let agent_config: tablehost::config::AgentConfig = toml::from_str(&format!(
        "name = \"flight-delays\"\ncomponent = {:?}\nsources = [\"flights\"]\noutputs = [\"long-delays\"]\ntables = [\"delays_by_origin\"]\n",
        component.display().to_string()
    ))?;
    let table = Arc::new(Table::new(
        "delays_by_origin",
        "unused",
        Arc::new(MemoryStore::new()),
    ));
    let mut agent = runtime.load(&agent_config, vec![table])?;

    // A warm-up call instantiates the component.
    agent.handle(&[flight_event(0)], 0, &Default::default())?;

    for batch_size in [1usize, 512] {
        let batches = if batch_size == 1 { 20_000 } else { 400 };
        let events: Vec<Event> = (0..batch_size as u64).map(flight_event).collect();
        let started = Instant::now();
        for _ in 0..batches {
            agent.handle(&events, 0, &Default::default())?;
        }
        let per_event = started.elapsed().as_secs_f64() * 1e6 / (batches * batch_size) as f64;
        println!("wasm: {per_event:.2} us per event with batches of {batch_size} (flight-delays: JSON parse, table get and set)");
    }
    Ok(())
}

fn table_write(scratch: &Path) -> anyhow::Result<()> {
    const WRITES: u64 = 1_000_000;
    let table = Table::new("bench", "unused", Arc::new(MemoryStore::new()));
    let value = br#"{"flights":12,"delay_total":345,"delay_max":67}"#.to_vec();
    let started = Instant::now();
    for i in 0..WRITES {
        table.put(
            0,
            format!("key-{}", i % 1000).into_bytes(),
            Some(value.clone()),
        );
    }
    let per_write = started.elapsed().as_secs_f64() * 1e9 / WRITES as f64;
    println!("table: {per_write:.0} ns per write into the write cache (1000 distinct keys)");

    let store = RocksStore::open("bench", &scratch.join("writes"), &RocksOptions::default())?;
    let batch: Vec<ChangelogRecord> = (0..10_000)
        .map(|i| ChangelogRecord {
            key: format!("key-{i:08}").into_bytes(),
            value: Some(value.clone()),
        })
        .collect();
    let started = Instant::now();
    for round in 0..100 {
        store.apply_changelog(0, &batch, (round + 1) * 10_000, &[])?;
    }
    store.persist()?;
    let per_record = started.elapsed().as_secs_f64() * 1e9 / 1_000_000.0;
    println!("table: {per_record:.0} ns per record applied to RocksDB (batches of 10000 with their offset)");
    Ok(())
}
