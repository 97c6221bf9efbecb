//! The `tablehost` binary as a user runs it: exit codes and the messages
//! for bad configs and bad input files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tablehost(args: &[&str], dir: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tablehost"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tablehost runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn counter_component() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/plugins/counter.wasm");
    assert!(
        path.is_file(),
        "{} is missing; build the example agents with `make plugins`",
        path.display()
    );
    path
}

fn write_config(dir: &Path, tables_line: &str) {
    let text = format!(
        "app_id = \"cli\"\nstate_dir = \"state\"\n[[topics]]\nname = \"events\"\npartitions = 2\n\
         [[agents]]\nname = \"counter\"\ncomponent = {:?}\nsources = [\"events\"]\n{tables_line}\n\
         [[tables]]\nname = \"counts\"\n",
        counter_component().display().to_string()
    );
    std::fs::write(dir.join("app.toml"), text).unwrap();
}

#[test]
fn missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = tablehost(&["run", "--config", "absent.toml"], dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("tablehost: error: config absent.toml: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn undeclared_table_in_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "tables = [\"other\"]");
    let (ok, _, stderr) = tablehost(&["run", "--config", "app.toml"], dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("config app.toml: agents[0].tables: table \"other\" is not declared; add a [[tables]] section with name = \"other\""),
        "{stderr}"
    );
}

#[test]
fn load_on_embedded_cluster_points_to_run() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "tables = [\"counts\"]");
    std::fs::write(dir.path().join("events.jsonl"), "{\"id\": \"a\"}\n").unwrap();
    let (ok, _, stderr) = tablehost(
        &[
            "load",
            "--config",
            "app.toml",
            "--topic",
            "events",
            "--key-field",
            "id",
            "events.jsonl",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("use `tablehost run --config app.toml --load events.jsonl --key-field id`"),
        "{stderr}"
    );
}

fn run_with_input(name: &str, contents: &str, key_field: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "tables = [\"counts\"]");
    std::fs::write(dir.path().join(name), contents).unwrap();
    tablehost(
        &[
            "run",
            "--config",
            "app.toml",
            "--load",
            name,
            "--key-field",
            key_field,
            "--stop-at-end",
        ],
        dir.path(),
    )
}

#[test]
fn empty_input_file_is_reported() {
    let (ok, _, stderr) = run_with_input("empty.jsonl", "", "id");
    assert!(!ok);
    assert!(stderr.contains("empty.jsonl"), "{stderr}");
    assert!(stderr.contains("contains no records"), "{stderr}");
}

#[test]
fn malformed_input_line_is_reported() {
    let (ok, _, stderr) = run_with_input("bad.jsonl", "{\"id\": \"a\"}\n{\"id\": \n", "id");
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn missing_key_field_is_reported() {
    let (ok, _, stderr) = run_with_input("events.csv", "name,size\na,1\n", "id");
    assert!(!ok);
    assert!(stderr.contains("events.csv"), "{stderr}");
    assert!(stderr.contains("\"id\""), "{stderr}");
}

#[test]
fn run_loads_and_dumps_table() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "tables = [\"counts\"]");
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"id\": \"a\"}\n{\"id\": \"b\"}\n{\"id\": \"a\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = tablehost(
        &[
            "run",
            "--config",
            "app.toml",
            "--load",
            "events.jsonl",
            "--key-field",
            "id",
            "--stop-at-end",
        ],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("handled 3 events"), "{stdout}");

    let (ok, stdout, stderr) = tablehost(
        &["table", "dump", "--config", "app.toml", "counts"],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with(r#"{"key":"a","partition":"#),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(r#","value":2}"#), "{}", lines[0]);
    assert!(
        lines[1].starts_with(r#"{"key":"b","partition":"#),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(r#","value":1}"#), "{}", lines[1]);

    let (ok, stdout, _) = tablehost(
        &["table", "get", "--config", "app.toml", "counts", "a"],
        dir.path(),
    );
    assert!(ok);
    assert!(stdout.trim_end().ends_with(r#","value":2}"#), "{stdout}");
    let (ok, _, stderr) = tablehost(
        &["table", "get", "--config", "app.toml", "counts", "zzz"],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("table counts: key \"zzz\" not found"),
        "{stderr}"
    );
}

#[test]
fn second_embedded_run_discards_old_state() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "tables = [\"counts\"]");
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"id\": \"a\"}\n{\"id\": \"a\"}\n",
    )
    .unwrap();
    let args = [
        "run",
        "--config",
        "app.toml",
        "--load",
        "events.jsonl",
        "--key-field",
        "id",
        "--stop-at-end",
    ];

    // Each run starts a new embedded cluster, so the second run counts the
    // same two events again from an empty table instead of adding to the first.
    let (ok, _, stderr) = tablehost(&args, dir.path());
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = tablehost(&args, dir.path());
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(
            "the embedded cluster starts empty, so the state belongs to an earlier process"
        ),
        "{stderr}"
    );

    let (ok, stdout, stderr) = tablehost(
        &["table", "get", "--config", "app.toml", "counts", "a"],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.trim_end().ends_with(r#","value":2}"#), "{stdout}");
}

/// Runs `tablehost` in `dir` with extra environment variables.
fn tablehost_with(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tablehost"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("tablehost runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn serve_without_admin_token_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("platform.toml"),
        "app_id = \"cli\"\n[admin]\n",
    )
    .unwrap();
    let (ok, _, stderr) = tablehost_with(
        &["serve", "--config", "platform.toml"],
        dir.path(),
        &[("TABLEHOST_ADMIN_TOKEN", "")],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "serve: no admin token; set TABLEHOST_ADMIN_TOKEN, or admin.token_sha256 in the config"
        ),
        "{stderr}"
    );
}

#[test]
fn agent_command_without_server_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("http://127.0.0.1:{port}");
    let (ok, _, stderr) = tablehost_with(
        &["agent", "--admin", &admin, "--token", "t", "list"],
        dir.path(),
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "cannot reach the admin API at {admin}; is `tablehost serve` running there?"
        )),
        "{stderr}"
    );
}

/// Kills the child process when dropped, so a failed test leaves no server.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tablehost serve` on the embedded cluster, driven by `tablehost tenant`
/// and `tablehost agent` as a user would: a tenant is created, a version
/// uploaded and deployed, and the list shows it deployed.
#[test]
fn serve_takes_an_agent_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("platform.toml"),
        format!(
            "app_id = \"cli\"\nstate_dir = \"state\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("counter.toml"),
        "name = \"counter\"\nsources = [\"events\"]\n[[tables]]\nname = \"counts\"\n",
    )
    .unwrap();
    let _server = Child(
        Command::new(env!("CARGO_BIN_EXE_tablehost"))
            .args(["serve", "--config", "platform.toml"])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .env("TABLEHOST_ADMIN_TOKEN", "cli-admin")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not listen within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let env = [
        ("TABLEHOST_ADMIN_URL", admin.as_str()),
        ("TABLEHOST_TOKEN", "cli-admin"),
    ];
    let (ok, stdout, stderr) = tablehost_with(&["tenant", "create", "acme"], dir.path(), &env);
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("th_"), "{token}");

    let env = [
        ("TABLEHOST_ADMIN_URL", admin.as_str()),
        ("TABLEHOST_TOKEN", token.as_str()),
    ];
    let component = counter_component().display().to_string();
    let (ok, stdout, stderr) = tablehost_with(
        &[
            "agent",
            "upload",
            "--manifest",
            "counter.toml",
            "--component",
            &component,
        ],
        dir.path(),
        &env,
    );
    assert!(ok, "{stderr}");
    let uploaded: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(uploaded["version"], 1);
    let (ok, _, stderr) = tablehost_with(&["agent", "deploy", "counter", "1"], dir.path(), &env);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = tablehost_with(&["agent", "list"], dir.path(), &env);
    assert!(ok, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["name"], "counter");
    assert_eq!(listed[0]["deployed"], 1);

    let (ok, _, stderr) = tablehost_with(&["agent", "rollback", "counter"], dir.path(), &env);
    assert!(!ok);
    assert!(
        stderr.contains(
            "409 agent \"counter\" has no earlier deployment to roll back to; name a version"
        ),
        "{stderr}"
    );
}
