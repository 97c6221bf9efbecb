//! `tablehost serve` through its admin API: tenants and tokens, uploads
//! and their validation, deployment, hot swap, rollback, isolation between
//! tenants, and a registry that survives a restart on a real broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tablehost::admin::client::Client;
use tablehost::serve::{serve, Platform, ServeOptions};
use tablehost::worker::Shutdown;
use tablehost_tests::{plugin, Broker, Harness, RUN_TIMEOUT};

const ADMIN_TOKEN: &str = "admin-secret-for-tests";

/// A `tablehost serve` running on its own thread.
struct Served {
    address: SocketAddr,
    platform: Arc<Platform>,
    shutdown: Arc<Shutdown>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    fn start(harness: &Harness, app: &str) -> Self {
        let config = harness.config(&format!(
            "app_id = {app:?}\ncommit_interval_ms = 200\n[admin]\nlisten = \"127.0.0.1:0\"\ndefault_partitions = 2\nmax_component_mib = 4\n"
        ));
        let address = Arc::new(Mutex::new(None));
        let platform = Arc::new(Mutex::new(None));
        let shutdown = Arc::new(Shutdown::default());
        let options = ServeOptions {
            admin_token: Some(ADMIN_TOKEN.into()),
            on_listen: Some({
                let address = address.clone();
                Arc::new(move |a| *address.lock().unwrap() = Some(a))
            }),
            on_platform: Some({
                let platform = platform.clone();
                Arc::new(move |p| *platform.lock().unwrap() = Some(p))
            }),
        };
        let thread = {
            let (kafka, shutdown) = (harness.kafka.clone(), shutdown.clone());
            std::thread::spawn(move || serve(&config, kafka, shutdown, options))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let (Some(address), Some(platform)) =
                (*address.lock().unwrap(), platform.lock().unwrap().clone())
            {
                return Self {
                    address,
                    platform,
                    shutdown,
                    thread,
                };
            }
            assert!(!thread.is_finished(), "serve stopped: {:?}", thread.join());
            assert!(
                Instant::now() < deadline,
                "serve did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self, token: &str) -> Client {
        Client::new(&format!("http://{}", self.address), token)
    }

    fn stop(self) {
        self.shutdown.request();
        self.thread
            .join()
            .expect("serve thread")
            .expect("serve stops cleanly");
    }
}

fn manifest(name: &str, tables: &[&str], outputs: &[&str]) -> Value {
    json!({
        "name": name,
        "sources": ["events"],
        "outputs": outputs,
        "tables": tables.iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "rollout": { "probation_events": 20, "max_trap_share": 0.1 },
        "limits": { "cpu_ms_per_event": 100, "memory_mib": 32, "max_key_bytes": 64, "max_value_bytes": 1024 },
    })
}

fn upload(client: &Client, manifest: Value, component: &str) -> anyhow::Result<Value> {
    let bytes = std::fs::read(plugin(component)).expect("component");
    client.call(
        "POST",
        "/v1/agents",
        Some(&json!({
            "manifest": manifest,
            "component": base64::engine::general_purpose::STANDARD.encode(bytes),
        })),
    )
}

fn wait_ready(client: &Client, agent: &str, version: u64) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let view = client
            .call(
                "GET",
                &format!("/v1/agents/{agent}/versions/{version}"),
                None,
            )
            .expect("version shows");
        match view["status"].as_str() {
            Some("ready") => return,
            Some("compiling") => {}
            other => panic!("version {version} of {agent} is {other:?}"),
        }
        assert!(Instant::now() < deadline, "version did not compile in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deploy(client: &Client, agent: &str, version: u64) -> Value {
    wait_ready(client, agent, version);
    client
        .call(
            "POST",
            &format!("/v1/agents/{agent}/deploy"),
            Some(&json!({ "version": version })),
        )
        .expect("deploys")
}

fn create_tenant(admin: &Client, name: &str) -> String {
    let reply = admin
        .call("POST", "/v1/tenants", Some(&json!({ "name": name })))
        .expect("tenant is created");
    reply["token"].as_str().expect("token").to_owned()
}

/// Returns a table's newest values from its changelog, as UTF-8.
fn changelog(harness: &Harness, topic: &str) -> BTreeMap<String, String> {
    harness
        .records(topic)
        .into_iter()
        .filter_map(|r| {
            Some((
                String::from_utf8(r.key?).unwrap(),
                String::from_utf8(r.value?).unwrap(),
            ))
        })
        .collect()
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {RUN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends an upload of `length` bytes, stopping where the server closes
/// the connection, and returns the reply it sent.
fn early_reply(address: SocketAddr, token: String, length: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..length / chunk.len() {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

fn error_of(result: anyhow::Result<Value>) -> String {
    format!("{:#}", result.expect_err("the request is refused"))
}

/// Tokens: none is unauthenticated, a tenant's token cannot manage tenants,
/// the admin token cannot manage agents, and a tenant never sees another
/// tenant's agents. Uploads are checked before anything is stored.
#[test]
fn tokens_and_validation() {
    let harness = Harness::new();
    let served = Served::start(&harness, "tokens");
    let admin = served.client(ADMIN_TOKEN);
    let acme_token = create_tenant(&admin, "acme");
    let acme = served.client(&acme_token);
    let beta = served.client(&create_tenant(&admin, "beta"));

    assert_eq!(
        error_of(served.client("").call("GET", "/v1/agents", None)),
        "GET /v1/agents: 401 unauthenticated: send `Authorization: Bearer <token>` with the admin or tenant token"
    );
    assert_eq!(
        error_of(served.client("wrong").call("GET", "/v1/agents", None)),
        "GET /v1/agents: 401 unauthenticated: the token matches no tenant and is not the admin token"
    );
    assert_eq!(
        error_of(acme.call("GET", "/v1/tenants", None)),
        "GET /v1/tenants: 403 forbidden: managing tenants needs the admin token"
    );
    assert_eq!(
        error_of(admin.call("GET", "/v1/agents", None)),
        "GET /v1/agents: 403 forbidden: agents belong to tenants; use the tenant's token"
    );
    assert_eq!(
        error_of(admin.call("POST", "/v1/tenants", Some(&json!({ "name": "acme" })))),
        "POST /v1/tenants: 409 tenant \"acme\" exists; pick another name"
    );

    let uploaded = upload(&acme, manifest("counter", &["counts"], &[]), "counter").expect("upload");
    assert_eq!(uploaded["version"], 1);
    assert_eq!(
        uploaded["size"],
        std::fs::metadata(plugin("counter")).unwrap().len()
    );
    let imports: Vec<&str> = uploaded["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        imports.contains(&"tablehost:agent/tables@0.1.0"),
        "{imports:?}"
    );
    assert_eq!(
        error_of(beta.call("GET", "/v1/agents/counter/versions/1", None)),
        "GET /v1/agents/counter/versions/1: 404 agent \"counter\" has no version 1; `tablehost agent list` shows the versions"
    );
    assert_eq!(beta.call("GET", "/v1/agents", None).unwrap(), json!([]));

    // Bad uploads, each refused with what is wrong.
    let not_wasm = acme.call(
        "POST",
        "/v1/agents",
        Some(
            &json!({ "manifest": manifest("counter", &["counts"], &[]), "component": "aGVsbG8=" }),
        ),
    );
    assert_eq!(
        error_of(not_wasm),
        "POST /v1/agents: 422 component: not a WebAssembly file: it starts with bytes 68 65 6c 6c instead of 00 61 73 6d (\"\\0asm\"); upload the .wasm file the build wrote"
    );
    // The server stops reading at its limit, replies 413 and closes the
    // connection, so a client still sending gets a failed send.
    let reply = early_reply(served.address, acme_token, 8 * 1024 * 1024);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.ends_with("{\"error\":\"the upload is larger than 6640984 bytes; a component may be at most 4 MiB (admin.max_component_mib)\"}"),
        "{reply}"
    );
    assert!(error_of(upload(
        &acme,
        manifest("counter", &["counts"], &[]),
        "counter_py"
    ))
    .starts_with("POST /v1/agents: the admin API closed the connection during the request"));
    let mut greedy = manifest("counter", &["counts"], &[]);
    greedy["limits"]["memory_mib"] = json!(4096);
    assert_eq!(
        error_of(upload(&acme, greedy, "counter")),
        "POST /v1/agents: 422 manifest: limits.memory_mib is 4096, above tenant acme's limit of 64; ask the administrator to raise it, or lower it"
    );
    let mut bad_window = manifest("counter", &["counts"], &[]);
    bad_window["tables"][0]["window"] = json!({ "type": "hopping", "size_ms": 1000 });
    assert_eq!(
        error_of(upload(&acme, bad_window, "counter")),
        "POST /v1/agents: 422 manifest: tables[0].window.step_ms: is required for hopping windows"
    );
    assert_eq!(
        error_of(upload(&acme, manifest("Counter", &["counts"], &[]), "counter")),
        "POST /v1/agents: 422 manifest: agent name \"Counter\" is not valid; use 1 to 40 lowercase letters, digits and '-', starting with a letter"
    );
    assert_eq!(
        error_of(acme.call("POST", "/v1/agents/counter/deploy", Some(&json!({ "version": 9 })))),
        "POST /v1/agents/counter/deploy: 404 agent \"counter\" has no version 9; `tablehost agent list` shows the versions"
    );
    served.stop();
}

/// Two tenants deploy agents that use the same table and topic names. A
/// tenant's counter is swapped to another version and back under load,
/// every event counts once, and the swaps cause no rebalance or replay.
/// The other tenant's agent tries to use tables and topics it did not
/// declare, which another tenant has, and is refused each time.
#[test]
fn deploy_swap_rollback_and_isolation() {
    let harness = Harness::new();
    // Three partitions, while serve creates missing topics with two: an
    // existing topic keeps its count.
    harness.topic("acme.events", 3);
    harness.topic("beta.events", 2);
    let served = Served::start(&harness, "platform");
    let admin = served.client(ADMIN_TOKEN);
    let acme = served.client(&create_tenant(&admin, "acme"));
    let beta = served.client(&create_tenant(&admin, "beta"));

    // acme's table `counts` and topic `not-declared` exist; beta's agent
    // declares neither, and asks for both.
    upload(
        &acme,
        manifest("counter", &["counts", "not-declared"], &["not-declared"]),
        "counter",
    )
    .unwrap();
    upload(
        &acme,
        manifest("counter", &["counts", "not-declared"], &["not-declared"]),
        "misbehave",
    )
    .unwrap();
    upload(
        &beta,
        manifest("nosy", &["counts", "results"], &["misbehave-out"]),
        "misbehave",
    )
    .unwrap();
    deploy(&acme, "counter", 1);
    deploy(&beta, "nosy", 1);

    let produce = |tenant: &str, count: usize, start: usize, value: &[u8]| {
        let keys: Vec<String> = (start..start + count).map(|n| format!("e{n}")).collect();
        let records: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((i % 2) as i32, Some(k.as_bytes()), Some(value)))
            .collect();
        harness.produce(&format!("{tenant}.events"), &records);
    };
    produce("beta", 1, 0, b"open-undeclared");
    produce("beta", 1, 1, b"send-undeclared");
    produce("acme", 2_000, 0, b"count");
    wait_for("acme's first events", || {
        served.platform.stats("acme", "counter", "v1").events >= 2_000
    });

    // Swap to v2 (misbehave, which counts `count` records the same way),
    // then roll back to v1, while records keep coming.
    deploy(&acme, "counter", 2);
    wait_for("the swap to v2", || {
        !served.platform.swap_pauses().is_empty()
    });
    produce("acme", 2_000, 2_000, b"count");
    wait_for("v2 handling events", || {
        served.platform.stats("acme", "counter", "v2").events >= 2_000
    });
    let rolled = acme
        .call("POST", "/v1/agents/counter/rollback", Some(&json!({})))
        .expect("rollback");
    assert_eq!(rolled["version"], 1);
    // The abandoned version 2 stays off the history.
    assert_eq!(rolled["history"], json!([]));
    wait_for("the swap back to v1", || {
        served.platform.swap_pauses().len() == 2
    });
    produce("acme", 2_000, 4_000, b"count");
    wait_for("v1 handling the last events", || {
        served.platform.stats("acme", "counter", "v1").events >= 4_000
    });
    let shown = acme
        .call("GET", "/v1/agents/counter/versions/2", None)
        .unwrap();
    assert_eq!(shown["status"], "ready");
    assert_eq!(shown["deployed"], false);
    assert_eq!(shown["counters"]["events"], 2_000);
    assert_eq!(shown["counters"]["traps"], 0);

    wait_for("beta's results", || {
        changelog(&harness, "platform-beta.results-changelog").len() == 2
    });
    served.stop();

    let counts = changelog(&harness, "platform-acme.counts-changelog");
    let expected: BTreeMap<String, String> = (0..6_000)
        .map(|n| (format!("e{n}"), "1".to_owned()))
        .collect();
    assert_eq!(counts, expected);
    assert_eq!(
        changelog(&harness, "platform-beta.results-changelog"),
        BTreeMap::from([
            (
                "open-undeclared".to_owned(),
                "Undeclared(\"not-declared\")".to_owned()
            ),
            (
                "send-undeclared".to_owned(),
                "UndeclaredTopic(\"not-declared\")".to_owned()
            ),
        ])
    );
    assert_eq!(records_in(&harness, "acme.not-declared"), 0);
}

/// Returns how many records `topic` holds, 0 when it does not exist.
fn records_in(harness: &Harness, topic: &str) -> usize {
    match harness.kafka.partition_count(topic) {
        Ok(Some(_)) => harness.records(topic).len(),
        _ => 0,
    }
}

/// On a real broker the registry is durable: after a restart of `serve`,
/// the tenant's token still works and its deployed version runs again.
#[test]
fn registry_survives_restart_on_tansu() {
    let broker = Broker::start();
    let harness = Harness::with_brokers(&broker.bootstrap());
    harness.topic("acme.events", 2);
    let served = Served::start(&harness, "durable");
    let admin = served.client(ADMIN_TOKEN);
    let token = create_tenant(&admin, "acme");
    let acme = served.client(&token);
    upload(&acme, manifest("counter", &["counts"], &[]), "counter").unwrap();
    upload(&acme, manifest("counter", &["counts"], &[]), "misbehave").unwrap();
    deploy(&acme, "counter", 1);
    deploy(&acme, "counter", 2);
    harness.produce(
        "acme.events",
        &[
            (0, Some(b"a"), Some(b"count")),
            (1, Some(b"b"), Some(b"count")),
        ],
    );
    wait_for("the first events", || {
        served.platform.stats("acme", "counter", "v2").events == 2
    });
    served.stop();

    let served = Served::start(&harness, "durable");
    let acme = served.client(&token);
    let agents = acme.call("GET", "/v1/agents", None).unwrap();
    assert_eq!(agents[0]["name"], "counter");
    assert_eq!(agents[0]["versions"], json!([1, 2]));
    assert_eq!(agents[0]["deployed"], 2);
    assert_eq!(agents[0]["history"], json!([1]));
    harness.produce("acme.events", &[(0, Some(b"a"), Some(b"count"))]);
    wait_for("the restarted agent's event", || {
        served.platform.stats("acme", "counter", "v2").events == 1
    });
    served.stop();
    let counts = changelog(&harness, "durable-acme.counts-changelog");
    assert_eq!(counts.get("a").map(String::as_str), Some("2"));
    assert_eq!(counts.get("b").map(String::as_str), Some("1"));
}

/// A hostile tenant's agent loops forever, grows memory without bound,
/// recurses until its stack overflows, traps, writes an oversized value
/// and fills its table past the tenant's key limit, next to a tenant whose
/// counter must stay exact. The host keeps running; each failure is the
/// hostile agent's dead letter and shows in its own counters. The hostile
/// agent's clock reads zero, because no grant gave it one.
#[test]
fn hostile_tenant_stays_contained() {
    let harness = Harness::new();
    harness.topic("good.events", 2);
    harness.topic("evil.events", 2);
    let served = Served::start(&harness, "hostile");
    let admin = served.client(ADMIN_TOKEN);
    let good = served.client(&create_tenant(&admin, "good"));
    let evil_token = admin
        .call(
            "POST",
            "/v1/tenants",
            Some(&json!({ "name": "evil", "limits": {
                "cpu_ms_per_event": 50, "memory_mib": 16, "max_key_bytes": 64,
                "max_value_bytes": 1024, "max_table_keys": 10,
            } })),
        )
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let evil = served.client(&evil_token);
    upload(&good, manifest("counter", &["counts"], &[]), "counter").unwrap();
    let mut rogue = manifest("rogue", &["counts", "results"], &["misbehave-out"]);
    rogue["limits"] = json!({
        "cpu_ms_per_event": 50, "memory_mib": 16, "max_key_bytes": 64, "max_value_bytes": 1024,
    });
    upload(&evil, rogue, "misbehave").unwrap();
    deploy(&good, "counter", 1);
    deploy(&evil, "rogue", 1);

    let mut hostile: Vec<(i32, Vec<u8>, &[u8])> = [
        "loop",
        "grow",
        "recurse",
        "trap",
        "oversized",
        "clock",
        "print",
    ]
    .iter()
    .map(|command| (0, command.as_bytes().to_vec(), command.as_bytes()))
    .collect();
    // A key over the tenant's 64 bytes, which `count` uses as table key.
    hostile.push((0, vec![b'k'; 100], b"count".as_slice()));
    // Twelve new keys in one partition: the last two pass the limit of 10.
    hostile.extend((0..12).map(|n| (1, format!("k{n:02}").into_bytes(), b"count".as_slice())));
    let records: Vec<_> = hostile
        .iter()
        .map(|(p, k, v)| (*p, Some(k.as_slice()), Some(*v)))
        .collect();
    harness.produce("evil.events", &records);
    let keys: Vec<String> = (0..3_000).map(|n| format!("g{n}")).collect();
    let good_records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                (i % 2) as i32,
                Some(k.as_bytes()),
                Some(b"count".as_slice()),
            )
        })
        .collect();
    harness.produce("good.events", &good_records);

    wait_for("both tenants' events", || {
        served.platform.stats("good", "counter", "v1").events == 3_000
            && served.platform.stats("evil", "rogue", "v1").dead_letters == 7
    });
    let evil_stats = served.platform.stats("evil", "rogue", "v1");
    let tenants = admin.call("GET", "/v1/tenants", None).unwrap();
    served.stop();

    // loop, grow, recurse, trap, the long key and two over the key limit.
    assert_eq!(evil_stats.dead_letters, 7);
    // oversized, the long key and the two table writes over the limit.
    assert_eq!(evil_stats.refused, 4);
    assert_eq!(tenants[0]["name"], "evil");
    assert_eq!(tenants[0]["counters"]["dead_letters"], 7);
    assert_eq!(tenants[1]["name"], "good");
    assert_eq!(tenants[1]["counters"]["events"], 3_000);
    assert_eq!(tenants[1]["counters"]["traps"], 0);
    // oversized, clock, print and the first ten keys.
    assert_eq!(evil_stats.events, 3 + 10);
    let counts = changelog(&harness, "hostile-good.counts-changelog");
    let expected: BTreeMap<String, String> =
        keys.iter().map(|k| (k.clone(), "1".to_owned())).collect();
    assert_eq!(counts, expected);
    let dead: BTreeMap<String, String> = harness
        .records("hostile-evil.rogue-dead-letters")
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                r.header("tablehost-error").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dead.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "grow",
            "k10",
            "k11",
            &"k".repeat(100),
            "loop",
            "recurse",
            "trap"
        ]
    );
    assert!(
        dead["k10"].contains(
            "table evil.counts partition 1 would hold 11 keys, above the limit of 10 (max_table_keys)"
        ),
        "{}",
        dead["k10"]
    );
    let results = changelog(&harness, "hostile-evil.results-changelog");
    assert_eq!(results["clock"], "0");
    assert_eq!(results["oversized"], "ValueTooLarge(2097152)");
}
