//! Helpers shared by the integration tests: an embedded cluster per test,
//! configs written to a temporary directory, and readers for topics and
//! table state.
//!
//! Every helper uses the product's real parts. The only test-specific
//! piece is where the example components are found: `build/plugins` of
//! this workspace (built by `make plugins`), or the directory named by
//! `TABLEHOST_PLUGINS`.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tablehost::config::Config;
use tablehost::kafka::producer::TrackedProducer;
use tablehost::kafka::{Kafka, TopicKind};
use tablehost::manager::table_dir;
use tablehost::store::{RocksStore, Store};
use tablehost::worker::{run, RunOptions, RunSummary, Shutdown};

/// Returns the path of an example component, such as `counter`.
///
/// # Panics
///
/// Panics with the command to run when the component has not been built.
pub fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TABLEHOST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/plugins"));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing; build the example agents with `make plugins`",
        path.display()
    );
    path
}

/// Returns the path of a file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// Returns the config text of application `app_id` whose `counter` agent
/// counts topic `events` into table `counts`. `settings` adds top-level
/// keys, such as `commit_interval_ms = 200`, and `table_settings` adds keys
/// to the table's section, such as `kind = "global"`.
pub fn counter_app(app_id: &str, settings: &str, table_settings: &str) -> String {
    format!(
        "app_id = {app_id:?}\n{settings}\n[[agents]]\nname = \"counter\"\ncomponent = {:?}\n\
         sources = [\"events\"]\ntables = [\"counts\"]\n[[tables]]\nname = \"counts\"\n{table_settings}\n",
        plugin("counter").display().to_string()
    )
}

/// How long [`Harness::run_to_end`] waits for a run to consume its sources.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// A record to produce: partition, key and value.
pub type TestRecord<'a> = (i32, Option<&'a [u8]>, Option<&'a [u8]>);

/// One test's world: an embedded cluster and a state directory.
pub struct Harness {
    /// The embedded cluster.
    pub kafka: Arc<Kafka>,
    /// Holds the state directory and configs until the test ends.
    pub dir: tempfile::TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Starts an embedded cluster. Logs go to the test's captured output,
    /// filtered by `RUST_LOG` (default `info`).
    pub fn new() -> Self {
        init_logs();
        let kafka = Arc::new(Kafka::embedded(Default::default()).expect("embedded cluster starts"));
        Self {
            kafka,
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Connects to the real broker at `bootstrap`.
    pub fn with_brokers(bootstrap: &str) -> Self {
        init_logs();
        let kafka = Arc::new(
            Kafka::connect(bootstrap, Default::default()).expect("client config is valid"),
        );
        Self {
            kafka,
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Parses `body` as a config whose `state_dir` is this harness's.
    pub fn config(&self, body: &str) -> Config {
        self.worker_config("state", body)
    }

    /// Parses `body` as a config whose `state_dir` is `name` in this
    /// harness's directory, for one of several workers of an application.
    pub fn worker_config(&self, name: &str, body: &str) -> Config {
        let text = format!(
            "state_dir = {:?}\n{body}",
            self.dir.path().join(name).display().to_string()
        );
        Config::parse(&text, std::path::Path::new("test.toml"), self.dir.path())
            .expect("test config is valid")
    }

    /// Starts a worker on its own thread that runs until stopped with
    /// [`Worker::stop`].
    pub fn start_worker(&self, config: &Config) -> Worker {
        self.start_worker_with(config, RunOptions::default())
    }

    /// Like [`Harness::start_worker`], with `options` for the run; their
    /// progress counter is replaced by the worker's.
    pub fn start_worker_with(&self, config: &Config, options: RunOptions) -> Worker {
        let shutdown = Arc::new(Shutdown::default());
        let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let (config, kafka, shutdown) = (config.clone(), self.kafka.clone(), shutdown.clone());
            let options = RunOptions {
                events_handled: Some(events.clone()),
                ..options
            };
            std::thread::spawn(move || run(&config, kafka, shutdown, options))
        };
        Worker {
            shutdown,
            events,
            thread,
        }
    }

    /// Returns the partition count of `topic`, which must exist.
    fn partitions(&self, topic: &str) -> u32 {
        self.kafka
            .partition_count(topic)
            .expect("metadata")
            .expect("topic exists")
    }

    /// Creates a consumer in group `group` that never commits by itself.
    fn reader(&self, group: &str) -> BaseConsumer {
        self.kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    /// Returns the offsets group `group` has committed for each partition
    /// of `topic`; a partition without a commit is 0.
    pub fn committed(&self, group: &str, topic: &str) -> Vec<i64> {
        let partitions = self.partitions(topic);
        let consumer = self.reader(group);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition as i32);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| {
                match committed
                    .find_partition(topic, p as i32)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(next)) => next,
                    _ => 0,
                }
            })
            .collect()
    }

    /// Waits until group `group` has committed every partition of `topic`
    /// up to its high watermark.
    ///
    /// # Panics
    ///
    /// Panics when that takes longer than [`RUN_TIMEOUT`].
    pub fn wait_committed_to_end(&self, group: &str, topic: &str) {
        let partitions = self.partitions(topic);
        let ends: Vec<i64> = (0..partitions)
            .map(|p| self.kafka.watermarks(topic, p).expect("watermarks").1)
            .collect();
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let committed = self.committed(group, topic);
            if committed == ends {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "group {group} committed {committed:?} of {topic}, not {ends:?}, within {RUN_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn topic(&self, topic: &str, partitions: u32) {
        self.kafka
            .ensure_topic(topic, partitions, TopicKind::Plain)
            .expect("topic is created");
    }

    /// Produces records to explicit partitions and waits for them.
    pub fn produce(&self, topic: &str, records: &[TestRecord<'_>]) {
        let producer = TrackedProducer::new(&self.kafka).expect("producer");
        for (partition, key, value) in records {
            producer
                .send(topic, Some(*partition), *key, *value, &[])
                .expect("record is queued");
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("records are acknowledged");
    }

    /// Runs the application until every source partition is consumed.
    pub fn run_to_end(&self, config: &Config) -> RunSummary {
        // The run happens on its own thread so a run that never reaches the
        // end fails the test after a bound instead of hanging the suite.
        let shutdown = Arc::new(Shutdown::default());
        let (sender, receiver) = std::sync::mpsc::channel();
        let worker = {
            let (config, kafka, shutdown) = (config.clone(), self.kafka.clone(), shutdown.clone());
            std::thread::spawn(move || {
                let options = RunOptions {
                    stop_at_end: true,
                    ..Default::default()
                };
                let _ = sender.send(run(&config, kafka, shutdown, options));
            })
        };
        match receiver.recv_timeout(RUN_TIMEOUT) {
            Ok(result) => {
                worker.join().expect("worker thread");
                result.expect("run succeeds")
            }
            Err(_) => {
                shutdown.request();
                let drained = receiver.recv_timeout(Duration::from_secs(60));
                panic!("the run did not consume its sources within {RUN_TIMEOUT:?}; after a drain request it returned {drained:?}");
            }
        }
    }

    /// Returns every entry of a RocksDB table as `(partition, key) -> value`.
    pub fn table(&self, config: &Config, table: &str) -> BTreeMap<(u32, Vec<u8>), Vec<u8>> {
        let store = open_store(config, table);
        let mut out = BTreeMap::new();
        for partition in store.partitions().expect("partitions") {
            for entry in store.iter(partition).expect("iterator") {
                let (key, value) = entry.expect("entry");
                out.insert((partition, key), value);
            }
        }
        out
    }

    /// Returns the changelog offset a table's store has persisted for a partition.
    pub fn persisted_offset(&self, config: &Config, table: &str, partition: u32) -> Option<i64> {
        open_store(config, table)
            .changelog_offset(partition)
            .expect("offset")
    }

    /// Deletes a table's RocksDB directory.
    pub fn delete_table_state(&self, config: &Config, table: &str) {
        std::fs::remove_dir_all(table_dir(&config.state_dir(), table))
            .expect("state directory is deleted");
    }

    /// Reads every record of `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        let partitions = self.partitions(topic);
        let consumer = self.reader("test-reader");
        let mut out = Vec::new();
        for partition in 0..partitions {
            let (low, high) = self.kafka.watermarks(topic, partition).expect("watermarks");
            if self.kafka.embedded_cluster().is_some() {
                assert_eq!(
                    low, 0,
                    "the embedded cluster dropped records of {topic}/{partition}"
                );
            }
            if high == 0 {
                continue;
            }
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Beginning)
                .unwrap();
            consumer.assign(&assignment).expect("assign");
            let mut next = 0;
            while next < high {
                match consumer.poll(Duration::from_secs(10)) {
                    Some(Ok(message)) => {
                        next = message.offset() + 1;
                        let headers = message
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        (h.key.to_owned(), h.value.unwrap_or_default().to_vec())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.push(Record {
                            partition,
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                            headers,
                        });
                    }
                    Some(Err(error)) => panic!("reading {topic}/{partition} failed: {error}"),
                    None => {
                        panic!("reading {topic}/{partition} timed out at offset {next} of {high}")
                    }
                }
            }
        }
        out
    }
}

/// A worker running on its own thread.
pub struct Worker {
    shutdown: Arc<Shutdown>,
    events: Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<RunSummary>>,
}

impl Worker {
    /// Returns how many events the worker has handled so far.
    pub fn events(&self) -> u64 {
        self.events.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `condition` holds, failing the test when the worker
    /// stops first or [`RUN_TIMEOUT`] passes; `what` names the condition
    /// in the failure message.
    pub fn wait_until(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {RUN_TIMEOUT:?}"
            );
            assert!(!self.has_stopped(), "the worker stopped before {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Returns whether the worker's run has ended, as after an error.
    pub fn has_stopped(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the worker to commit and stop, and returns its summary.
    ///
    /// # Panics
    ///
    /// Panics when the run failed.
    pub fn stop(self) -> RunSummary {
        self.shutdown.request();
        self.thread
            .join()
            .expect("worker thread")
            .expect("run succeeds")
    }
}

/// Opens the RocksDB store of a stopped application's table.
fn open_store(config: &Config, table: &str) -> RocksStore {
    let options = &config
        .tables
        .iter()
        .find(|t| t.name == table)
        .expect("table is declared")
        .rocksdb;
    RocksStore::open(table, &table_dir(&config.state_dir(), table), options).expect("store opens")
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A tansu broker process on a free port of 127.0.0.1, with SQLite storage
/// in a directory it keeps across [`Broker::restart`]. Dropping it kills
/// the process.
pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// Panics with the install command when tansu is not installed, and
    /// when the broker does not listen within 30 seconds.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Self {
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        broker.spawn();
        broker
    }

    /// Returns the bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process and starts it again on the same port and
    /// storage, as after a crash.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = tansu_binary();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).expect("log file");
        // The storage URL is relative to the working directory: tansu
        // resolves `sqlite://` paths against it.
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Maintenance (compaction, retention) runs hourly, so a test reads back
            // every record it wrote.
            .args([
                "--storage-engine",
                "sqlite://broker.db?maintenance_interval=3600s",
            ])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", binary.display()));
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {} within 30 seconds",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tansu_binary() -> PathBuf {
    let path = std::env::var_os("TABLEHOST_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/tablehost/tools/bin/tansu")
        });
    assert!(
        path.is_file(),
        "{} is missing; install the tansu broker with `bash .ci/tansu`",
        path.display()
    );
    path
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition.
    pub partition: u32,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Returns the value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}
