//! Benchmarks of the plugin platform. Run with `make bench`; the results
//! and the machine they came from are recorded in BENCHMARKS.md.
//!
//! Each measurement prints one line `name: value unit (details)`:
//!
//! - `instance`: the cost of a fresh instance from a pre-instantiated
//!   component, per language of the counting agent. The host pays it for
//!   the first event after a trap and for every swap;
//! - `swap`: a worker handles a steady stream over 8 partitions while its
//!   counting agent is swapped between two versions 100 times. It prints
//!   the pause each swap holds up the worker's partitions (p50 and p99)
//!   and the number of events handled;
//! - `neighbour`: a tenant's counter handles 600,000 events, alone and then
//!   next to a tenant whose agent loops, grows memory, recurses and traps
//!   on every event, twice each; the well-behaved tenant's events per
//!   second in each run and the ratio of the means.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use serde_json::json;
use tablehost::admin::client::Client;
use tablehost::agent::{AgentGrants, AgentNotice, AgentRuntime, Event, Rollout, Stats};
use tablehost::config::{Config, Limits};
use tablehost::control::{Command, Control};
use tablehost::kafka::producer::TrackedProducer;
use tablehost::kafka::{Kafka, TopicKind};
use tablehost::serve::{serve, Platform, ServeOptions};
use tablehost::store::MemoryStore;
use tablehost::table::Table;
use tablehost::worker::{run, RunOptions, Shutdown};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/plugins");
    for name in [
        "counter",
        "counter_core",
        "counter_py",
        "counter_js",
        "misbehave",
    ] {
        let path = plugins.join(format!("{name}.wasm"));
        anyhow::ensure!(
            path.is_file(),
            "{} is missing; run `make plugins`",
            path.display()
        );
    }
    let scratch = tempfile::tempdir()?;
    fresh_instances(&plugins, scratch.path())?;
    swap_pauses(&plugins, scratch.path())?;
    neighbour(&plugins, scratch.path())?;
    Ok(())
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * share).round() as usize;
    sorted[index]
}

fn event(offset: i64) -> Event {
    Event {
        topic: "events".into(),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(b"count".to_vec()),
        headers: Vec::new(),
    }
}

fn fresh_instances(plugins: &Path, scratch: &Path) -> anyhow::Result<()> {
    let runtime = AgentRuntime::new(&scratch.join("compiled"))?;
    let config: tablehost::config::AgentConfig = toml::from_str(
        "name = \"counter\"\ncomponent = \"unused\"\nsources = [\"events\"]\ntables = [\"counts\"]\n",
    )?;
    for (name, rounds) in [
        ("counter", 500),
        ("counter_core", 500),
        ("counter_js", 100),
        ("counter_py", 50),
    ] {
        let bytes = std::fs::read(plugins.join(format!("{name}.wasm")))?;
        let compiled = Instant::now();
        let version = runtime.prepare("counter", name, &bytes)?;
        let compile = compiled.elapsed();
        let table = Arc::new(Table::new("counts", "unused", Arc::new(MemoryStore::new())));
        let mut agent = runtime.agent(
            AgentGrants::new(&config, vec![table]),
            version.clone(),
            Stats::default(),
        );
        agent.handle(&[event(0)], 0, &Default::default())?;
        let mut pauses = Vec::new();
        for round in 0..rounds {
            agent.swap(
                version.clone(),
                Rollout {
                    probation_events: 0,
                    max_trap_share: 0.0,
                },
                Limits::default(),
            );
            for notice in agent.take_notices() {
                match notice {
                    AgentNotice::Swapped { pause, .. } => pauses.push(pause),
                    other => anyhow::bail!("{name}: {other:?}"),
                }
            }
            agent.handle(&[event(round + 1)], 0, &Default::default())?;
        }
        pauses.sort();
        println!(
            "instance: {name} {:.0} us p50, {:.0} us p99 per fresh instance ({rounds} instances, {} bytes, first load {:.2} s)",
            percentile(&pauses, 0.5).as_secs_f64() * 1e6,
            percentile(&pauses, 0.99).as_secs_f64() * 1e6,
            bytes.len(),
            compile.as_secs_f64()
        );
    }
    Ok(())
}

/// Produces `total` records with keys `e<n>` to `topic`, `rate` per second.
fn produce(
    kafka: &Arc<Kafka>,
    topic: &str,
    partitions: u32,
    total: usize,
    rate: usize,
) -> anyhow::Result<()> {
    let producer = TrackedProducer::new(kafka)?;
    let started = Instant::now();
    for n in 0..total {
        let key = format!("e{n}");
        producer.send(
            topic,
            Some((n % partitions as usize) as i32),
            Some(key.as_bytes()),
            Some(b"count"),
            &[],
        )?;
        if rate > 0 && n % 1_000 == 999 {
            let due = Duration::from_secs_f64((n + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

fn swap_pauses(plugins: &Path, scratch: &Path) -> anyhow::Result<()> {
    const PARTITIONS: u32 = 8;
    const TOTAL: usize = 300_000;
    const SWAPS: usize = 100;
    let kafka = Arc::new(Kafka::embedded(BTreeMap::new())?);
    kafka.ensure_topic("events", PARTITIONS, TopicKind::Plain)?;
    let dir = scratch.join("swap");
    let config = Config::parse(
        &format!(
            "app_id = \"swap\"\nstate_dir = {:?}\ncommit_interval_ms = 500\n[[agents]]\nname = \"counter\"\ncomponent = {:?}\nsources = [\"events\"]\ntables = [\"counts\"]\n[[tables]]\nname = \"counts\"\n",
            dir.display().to_string(),
            plugins.join("counter.wasm").display().to_string()
        ),
        Path::new("bench.toml"),
        scratch,
    )?;
    let runtime = Arc::new(AgentRuntime::new(&dir.join("compiled"))?);
    let versions = [
        runtime.prepare(
            "counter",
            "v1",
            &std::fs::read(plugins.join("counter.wasm"))?,
        )?,
        runtime.prepare(
            "counter",
            "v2",
            &std::fs::read(plugins.join("misbehave.wasm"))?,
        )?,
    ];
    let control = Control::new();
    let shutdown = Arc::new(Shutdown::default());
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let worker = {
        let (kafka, shutdown, options) = (
            kafka.clone(),
            shutdown.clone(),
            RunOptions {
                control: Some(control.clone()),
                runtime: Some(runtime.clone()),
                events_handled: Some(events.clone()),
                ..Default::default()
            },
        );
        std::thread::spawn(move || run(&config, kafka, shutdown, options))
    };
    let producer = {
        let kafka = kafka.clone();
        std::thread::spawn(move || produce(&kafka, "events", PARTITIONS, TOTAL, 20_000))
    };
    while events.load(Ordering::SeqCst) < 20_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut pauses = Vec::new();
    for round in 0..SWAPS {
        control.send(Command::Swap {
            agent: "counter".into(),
            version: versions[(round + 1) % 2].clone(),
            rollout: Rollout {
                probation_events: 0,
                max_trap_share: 0.0,
            },
            limits: Limits::default(),
        });
        for notice in control.wait_notices(Duration::from_secs(30)) {
            match notice {
                AgentNotice::Swapped { pause, .. } => pauses.push(pause),
                other => anyhow::bail!("swap: {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events.load(Ordering::SeqCst) < TOTAL as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.request();
    let summary = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    anyhow::ensure!(
        pauses.len() == SWAPS,
        "swap: {} of {SWAPS} swaps reported",
        pauses.len()
    );
    anyhow::ensure!(
        summary.events == TOTAL as u64,
        "swap: {} of {TOTAL} events handled",
        summary.events
    );
    let replayed: u64 = summary.recoveries.iter().map(|r| r.replayed).sum();
    pauses.sort();
    println!(
        "swap: {:.0} us p50, {:.0} us p99, {:.0} us max pause per swap on each of {PARTITIONS} partitions ({SWAPS} swaps under 20,000 events/s, {} of {TOTAL} events handled, {replayed} changelog records replayed)",
        percentile(&pauses, 0.5).as_secs_f64() * 1e6,
        percentile(&pauses, 0.99).as_secs_f64() * 1e6,
        pauses.last().unwrap().as_secs_f64() * 1e6,
        summary.events,
    );
    Ok(())
}

const ADMIN: &str = "bench-admin-token";

/// A `serve` on the embedded cluster and its admin API.
struct Served {
    kafka: Arc<Kafka>,
    platform: Arc<Platform>,
    admin: Client,
    base: String,
    shutdown: Arc<Shutdown>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    fn start(app: &str, scratch: &Path) -> anyhow::Result<Self> {
        let kafka = Arc::new(Kafka::embedded(BTreeMap::new())?);
        let config = Config::parse(
            &format!(
                "app_id = {app:?}\nstate_dir = {:?}\ncommit_interval_ms = 500\n[admin]\nlisten = \"127.0.0.1:0\"\n",
                scratch.join(app).display().to_string()
            ),
            Path::new("bench.toml"),
            scratch,
        )?;
        let address = Arc::new(Mutex::new(None));
        let platform = Arc::new(Mutex::new(None));
        let options = ServeOptions {
            admin_token: Some(ADMIN.into()),
            on_listen: Some({
                let address = address.clone();
                Arc::new(move |a| *address.lock().unwrap() = Some(a))
            }),
            on_platform: Some({
                let platform = platform.clone();
                Arc::new(move |p| *platform.lock().unwrap() = Some(p))
            }),
        };
        let shutdown = Arc::new(Shutdown::default());
        let thread = {
            let (kafka, shutdown) = (kafka.clone(), shutdown.clone());
            std::thread::spawn(move || serve(&config, kafka, shutdown, options))
        };
        loop {
            if let (Some(address), Some(platform)) =
                (*address.lock().unwrap(), platform.lock().unwrap().clone())
            {
                let base = format!("http://{address}");
                return Ok(Self {
                    kafka,
                    platform,
                    admin: Client::new(&base, ADMIN),
                    base,
                    shutdown,
                    thread,
                });
            }
            anyhow::ensure!(!thread.is_finished(), "serve stopped at start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates tenant `name`, uploads `component` as its agent `agent` with
    /// `limits`, deploys it and returns the tenant's client.
    fn tenant(
        &self,
        name: &str,
        agent: &str,
        component: &Path,
        limits: serde_json::Value,
    ) -> anyhow::Result<Client> {
        let token = self.admin.call(
            "POST",
            "/v1/tenants",
            Some(&json!({ "name": name, "limits": limits })),
        )?["token"]
            .as_str()
            .context("token")?
            .to_owned();
        let client = Client::new(&self.base, &token);
        let manifest = json!({ "name": agent, "sources": ["events"], "tables": [{ "name": "counts" }, { "name": "results" }] });
        let bytes = std::fs::read(component)?;
        client.call(
            "POST",
            "/v1/agents",
            Some(&json!({ "manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(bytes) })),
        )?;
        loop {
            let status = client.call("GET", &format!("/v1/agents/{agent}/versions/1"), None)?;
            if status["status"] == "ready" {
                break;
            }
            anyhow::ensure!(
                status["status"] == "compiling",
                "{name}: {}",
                status["status"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        client.call(
            "POST",
            &format!("/v1/agents/{agent}/deploy"),
            Some(&json!({ "version": 1 })),
        )?;
        Ok(client)
    }

    fn stop(self) -> anyhow::Result<()> {
        self.shutdown.request();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("serve panicked"))?
    }
}

/// Returns the good tenant's events per second while it handles `total`
/// preloaded events, from its first event to its last.
fn good_rate(served: &Served, total: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let events = served.platform.stats("good", "counter", "v1").events;
        if events > 0 && first.is_none() {
            first = Some((Instant::now(), events));
        }
        if events >= total {
            let (at, already) = first.expect("set above");
            return Ok((total - already) as f64 / at.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "neighbour: {events} of {total} events in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn neighbour(plugins: &Path, scratch: &Path) -> anyhow::Result<()> {
    const TOTAL: usize = 600_000;
    // Enough partitions that the preloaded events fit the embedded
    // cluster's 5 MiB per partition.
    const PARTITIONS: u32 = 16;
    let limits = json!({ "cpu_ms_per_event": 50, "memory_mib": 16, "max_key_bytes": 64, "max_value_bytes": 1024 });
    // Two runs of each, alternating, so a slow first run or a busy moment
    // of the machine does not land on one side only.
    let mut rates = [Vec::new(), Vec::new()];
    for (round, hostile) in [false, true, false, true].into_iter().enumerate() {
        let app = format!("neighbour-{round}");
        let app = app.as_str();
        let served = Served::start(app, scratch)?;
        served
            .kafka
            .ensure_topic("good.events", PARTITIONS, TopicKind::Plain)?;
        produce(&served.kafka, "good.events", PARTITIONS, TOTAL, 0)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut flood = None;
        if hostile {
            served
                .kafka
                .ensure_topic("evil.events", 4, TopicKind::Plain)?;
            served.tenant(
                "evil",
                "rogue",
                &plugins.join("misbehave.wasm"),
                limits.clone(),
            )?;
            // Hostile events keep arriving for the whole run.
            let (kafka, stop) = (served.kafka.clone(), stop.clone());
            flood = Some(std::thread::spawn(move || -> anyhow::Result<u64> {
                let producer = TrackedProducer::new(&kafka)?;
                let mut sent = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    for command in ["loop", "grow", "recurse", "trap"] {
                        producer.send(
                            "evil.events",
                            Some((sent % 4) as i32),
                            Some(command.as_bytes()),
                            Some(command.as_bytes()),
                            &[],
                        )?;
                        sent += 1;
                    }
                    producer.flush(Duration::from_secs(30))?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(sent)
            }));
        }
        served.tenant(
            "good",
            "counter",
            &plugins.join("counter.wasm"),
            limits.clone(),
        )?;
        let rate = good_rate(&served, TOTAL as u64)?;
        stop.store(true, Ordering::SeqCst);
        let evil = served.platform.stats("evil", "rogue", "v1");
        let sent = match flood {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("flood panicked"))??,
            None => 0,
        };
        served.stop()?;
        println!(
            "neighbour: {rate:.0} events/s for the good tenant {} ({TOTAL} events{})",
            if hostile {
                "next to a hostile one"
            } else {
                "alone"
            },
            if hostile {
                format!(
                    "; the hostile agent got {sent} events: {} traps, {} dead letters",
                    evil.traps, evil.dead_letters
                )
            } else {
                String::new()
            }
        );
        rates[usize::from(hostile)].push(rate);
    }
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    println!(
        "neighbour: with/without the hostile tenant: {:.2} (means of two runs each: {:.0} and {:.0} events/s)",
        mean(&rates[1]) / mean(&rates[0]),
        mean(&rates[1]),
        mean(&rates[0])
    );
    Ok(())
}
