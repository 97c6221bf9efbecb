//! An agent that misbehaves on request, for the host's guard tests.
//!
//! Its configuration declares tables `counts` and `results` and the output
//! topic `misbehave-out`. The record value, read as UTF-8, selects what it
//! does:
//!
//! | value             | behaviour |
//! |-------------------|-----------|
//! | `count`           | increments `counts[key]` like the counter plugin: the key is the record key as raw bytes (empty for a record without a key), the value a JSON integer |
//! | `send`            | sends a record to `misbehave-out` with the record's key and the value `send` |
//! | `trap`            | panics, which traps the instance |
//! | `loop`            | spins forever, until the host's CPU bound traps it |
//! | `grow`            | allocates and fills 1 MiB blocks forever, until the host's memory cap (or a failed allocation, which aborts) traps it |
//! | `recurse`         | recurses without bound, until the stack overflows and traps |
//! | `fail`            | returns the error `misbehave: failure requested` |
//! | `open-undeclared` | opens table `not-declared` and records the result |
//! | `oversized`       | sets a 2 MiB value (2097152 bytes) under key `oversized` in `counts` and records the result |
//! | `send-undeclared` | sends a record to topic `not-declared` and records the result |
//! | `set`             | adds `x`, `y` and `z` to the set of the record key in the set table `counts`, discards `y`, and writes the members joined by `,` to `results["set"]` |
//! | `set-read`        | writes the members of the record key's set in `counts`, joined by `,`, to `results["set-read"]` |
//! | `set-ops`         | on the record key's set in `counts`: union with `a`, `b`, `c`, difference with `b`, intersection with `a`, `x`, and writes `added N, removed M, dropped D: ` and the members joined by `,` to `results["set-ops"]` |
//! | `set-clear`       | clears the record key's set in `counts` and writes `removed N, left M` to `results["set-clear"]` |
//! | `print`           | writes one line to stdout and one to stderr, which the host logs with the agent's name |
//! | `clock`           | writes the wall clock in milliseconds since the epoch, as decimal text, to `results["clock"]`: `0` unless the host grants clocks |
//! | `scan`            | sets `counts["k3"]` to `7`, deletes `counts["k2"]`, then writes the entries of `counts` whose keys start with `k` to `results["scan"]` as `key=value` pairs joined by `,` |
//!
//! Any other value, or a tombstone, fails the event with an error that
//! names the value.
//!
//! # Recorded results
//!
//! The last three behaviours write one entry to table `results`, under a
//! key equal to the behaviour's name, and then succeed. The value is plain
//! UTF-8 text stored as raw bytes (not JSON). When the host rejects the
//! call, the text is the `Debug` form of the SDK's mirror of the WIT error:
//!
//! | key               | expected text |
//! |-------------------|---------------|
//! | `open-undeclared` | `Undeclared("not-declared")` |
//! | `oversized`       | `ValueTooLarge(2097152)`, when the agent's `max_value_bytes` limit is below 2 MiB (the default is 1 MiB) |
//! | `send-undeclared` | `UndeclaredTopic("not-declared")` |
//!
//! When the host accepts the call, the text is `accepted`. Any other SDK
//! error is written as its `Display` text.

use std::hint::black_box;

use tablehost_guest::{export_agent, output, Agent, Error, Event, Raw, SetTable, Table};

/// The size of the value that the `oversized` behaviour writes.
const OVERSIZED_VALUE_BYTES: usize = 2 * 1024 * 1024;

/// The size of each block that the `grow` behaviour allocates.
const GROW_BLOCK_BYTES: usize = 1024 * 1024;

/// The name of a table and a topic that the configuration does not declare.
const UNDECLARED: &str = "not-declared";

struct Misbehave;

impl Agent for Misbehave {
    fn handle(event: &Event) -> Result<(), Error> {
        match event.value_str()? {
            "count" => count(event),
            "send" => output::send("misbehave-out", event.key.as_deref(), Some(b"send")),
            "trap" => panic!("misbehave: trap requested at offset {}", event.offset),
            "loop" => spin_forever(),
            "grow" => grow_forever(),
            "recurse" => {
                black_box(recurse(0));
                Ok(())
            }
            "fail" => Err(Error::msg("misbehave: failure requested")),
            "open-undeclared" => {
                let result = Table::<str, Vec<u8>, Raw>::open(UNDECLARED).map(drop);
                record_result("open-undeclared", result)
            }
            "oversized" => {
                let counts: Table<str, Vec<u8>, Raw> = Table::open("counts")?;
                let result = counts.set("oversized", &vec![b'x'; OVERSIZED_VALUE_BYTES]);
                record_result("oversized", result)
            }
            "send-undeclared" => {
                let result = output::send(UNDECLARED, event.key.as_deref(), Some(b"x"));
                record_result("send-undeclared", result)
            }
            "scan" => scan(),
            "set" => set_operations(event),
            "set-read" => set_read(event),
            "set-clear" => set_clear(event),
            "set-ops" => set_algebra(event),
            "print" => {
                println!("misbehave: stdout at offset {}", event.offset);
                eprintln!("misbehave: stderr at offset {}", event.offset);
                Ok(())
            }
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                record_text("clock", &now.to_string())
            }
            other => Err(Error::msg(format!(
                "misbehave: unknown behaviour {other:?}; expected one of count, send, \
                 trap, loop, grow, recurse, fail, open-undeclared, oversized, send-undeclared, scan, set, set-read, set-clear, set-ops, print, clock"
            ))),
        }
    }
}

export_agent!(Misbehave);

/// Increments `counts[key]`, as the counter plugin does.
fn count(event: &Event) -> Result<(), Error> {
    let counts: Table<Vec<u8>, u64> = Table::open("counts")?;
    let key = event.key_bytes();

    let count = counts.get_or_default(key)? + 1;
    counts.set(key, &count)
}

/// Writes one key and deletes another in the batch, then lists the `k`
/// prefix of `counts`, so a test can check that the scan includes the batch's own writes.
fn scan() -> Result<(), Error> {
    let counts: Table<str, Vec<u8>, Raw> = Table::open("counts")?;
    counts.set("k3", &b"7".to_vec())?;
    counts.delete("k2")?;

    let mut listed = Vec::new();
    for entry in counts.prefix("k") {
        let (key, value) = entry?;
        listed.push(format!(
            "{}={}",
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        ));
    }

    let results: Table<str, Vec<u8>, Raw> = Table::open("results")?;
    results.set("scan", &listed.join(",").into_bytes())
}

/// Adds three members to the record key's set, discards one, and records
/// the members left.
fn set_operations(event: &Event) -> Result<(), Error> {
    let sets: SetTable<[u8], str> = SetTable::open("counts")?;
    let key = event.key_bytes();
    for member in ["x", "y", "z"] {
        sets.add(key, member)?;
    }
    sets.discard(key, "y")?;
    record_text("set", &joined_members(&sets, key)?)
}

/// Applies a union, a difference and an intersection to the record key's
/// set, and records the counts and the members left.
fn set_algebra(event: &Event) -> Result<(), Error> {
    let sets: SetTable<[u8], str> = SetTable::open("counts")?;
    let key = event.key_bytes();
    let added = sets.union(key, ["a", "b", "c"])?;
    let removed = sets.difference(key, ["b"])?;
    let dropped = sets.intersection(key, ["a", "x"])?;
    let members = joined_members(&sets, key)?;
    record_text(
        "set-ops",
        &format!("added {added}, removed {removed}, dropped {dropped}: {members}"),
    )
}

/// Records the members of the record key's set.
fn set_read(event: &Event) -> Result<(), Error> {
    let sets: SetTable<[u8], str> = SetTable::open("counts")?;
    record_text("set-read", &joined_members(&sets, event.key_bytes())?)
}

/// Clears the record key's set and records how many members were removed
/// and how many are left.
fn set_clear(event: &Event) -> Result<(), Error> {
    let sets: SetTable<[u8], str> = SetTable::open("counts")?;
    let key = event.key_bytes();
    let removed = sets.clear(key)?;
    let left = sets.members(key)?.len();
    record_text("set-clear", &format!("removed {removed}, left {left}"))
}

fn joined_members(sets: &SetTable<[u8], str>, key: &[u8]) -> Result<String, Error> {
    let members: Vec<String> = sets
        .members(key)?
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    Ok(members.join(","))
}

fn record_text(key: &str, text: &str) -> Result<(), Error> {
    let results: Table<str, Vec<u8>, Raw> = Table::open("results")?;
    results.set(key, &text.as_bytes().to_vec())
}

/// Writes the outcome of a guarded call to `results[key]`.
fn record_result(key: &str, result: Result<(), Error>) -> Result<(), Error> {
    let text = match result {
        Ok(()) => "accepted".to_string(),
        Err(error) => result_text(&error),
    };

    let results: Table<str, Vec<u8>, Raw> = Table::open("results")?;
    results.set(key, &text.into_bytes())
}

/// Returns the `Debug` text of the host's error inside `error`, or the
/// `Display` text of any other error.
fn result_text(error: &Error) -> String {
    if let Some(table_error) = error.table_error() {
        format!("{table_error:?}")
    } else if let Some(send_error) = error.send_error() {
        format!("{send_error:?}")
    } else {
        error.to_string()
    }
}

/// Loops forever. `black_box` keeps the optimizer from proving the loop
/// has no effect.
fn spin_forever() -> ! {
    let mut iterations = 0u64;
    loop {
        iterations = black_box(iterations.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks forever. `vec![1; n]` writes every byte, so the
/// pages are touched and not only reserved.
fn grow_forever() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![1; GROW_BLOCK_BYTES]);
        black_box(&blocks);
    }
}

/// Recurses until the stack overflows. Each frame keeps a 4 KiB array on
/// the stack, and the addition after the call prevents tail-call
/// elimination.
#[allow(
    unconditional_recursion,
    reason = "the `recurse` behaviour must overflow the stack"
)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth as u8; 4096]);
    recurse(black_box(depth + 1)).wrapping_add(u64::from(frame[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tablehost_guest::{SendError, TableError};

    #[test]
    fn result_text_of_undeclared_table() {
        let error = Error::Table {
            table: UNDECLARED.to_string(),
            operation: "open",
            source: TableError::Undeclared(UNDECLARED.to_string()),
        };

        assert_eq!(result_text(&error), "Undeclared(\"not-declared\")");
    }

    #[test]
    fn result_text_of_oversized_value() {
        let error = Error::Table {
            table: "counts".to_string(),
            operation: "set",
            source: TableError::ValueTooLarge(OVERSIZED_VALUE_BYTES as u64),
        };

        assert_eq!(result_text(&error), "ValueTooLarge(2097152)");
    }

    #[test]
    fn result_text_of_undeclared_topic() {
        let error = Error::Send {
            topic: UNDECLARED.to_string(),
            source: SendError::UndeclaredTopic(UNDECLARED.to_string()),
        };

        assert_eq!(result_text(&error), "UndeclaredTopic(\"not-declared\")");
    }

    #[test]
    fn result_text_of_other_error() {
        assert_eq!(result_text(&Error::msg("boom")), "boom");
    }
}
