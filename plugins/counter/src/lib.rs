//! Counts records per key.
//!
//! Table `counts` is keyed by the record key as raw bytes, so empty and
//! non-UTF-8 keys work, and a record without a key counts under the empty
//! key. The value is the JSON integer count, incremented per record. A
//! record whose value is exactly the bytes `delete` removes the key
//! instead of counting.

use tablehost_guest::{export_agent, Agent, Error, Event, Table};

/// The value that deletes the record's key from `counts`.
const DELETE_VALUE: &[u8] = b"delete";

struct Counter;

impl Agent for Counter {
    fn handle(event: &Event) -> Result<(), Error> {
        let counts: Table<Vec<u8>, u64> = Table::open("counts")?;
        let key = event.key_bytes();

        if event.value.as_deref() == Some(DELETE_VALUE) {
            return counts.delete(key);
        }

        let count = counts.get_or_default(key)? + 1;
        counts.set(key, &count)
    }
}

export_agent!(Counter);
