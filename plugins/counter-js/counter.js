// Count records per key: the JavaScript version of the Rust agent `counter`.
//
// Table `counts` is keyed by the record key as raw bytes, so empty and
// non-UTF-8 keys work, and a record without a key counts under the empty
// key. The value is the count as a JSON integer in ASCII, such as `3`. A
// record whose value is exactly the bytes `delete` removes the key instead
// of counting. Error messages follow the format of the Rust SDK
// (`tablehost-guest`), so dead letters read the same for either agent.

import { Table } from "tablehost:agent/tables@0.1.0";

const COUNTS_TABLE = "counts";

// The record value that deletes the record's key from `counts`.
const DELETE_VALUE = asciiBytes("delete");

const U64_MAX = (1n << 64n) - 1n;

// The `counts` handle, opened on the first event and kept for the
// instance's life, as the Rust SDK does.
let counts = null;

// An error of one event, reported to the host in the `handle` result.
class AgentError extends Error {}

export const handler = {
  // A thrown string becomes the `err` of `handle`'s `result<_, string>`.
  handle(events) {
    for (const event of events) {
      try {
        countEvent(event);
      } catch (error) {
        if (!(error instanceof AgentError)) {
          throw error;
        }
        // Kafka topic names contain only ASCII letters, digits, `.`, `_`
        // and `-`, so plain quotes match Rust's `{:?}` output.
        throw `failed to handle event at topic "${event.topic}" partition ${event.partition} offset ${event.offset}: ${error.message}`;
      }
    }
  },
};

// Adds one to the count of the event's key, or deletes the key.
function countEvent(event) {
  const table = openCounts();
  const key = event.key ?? new Uint8Array(0);

  if (bytesEqual(event.value, DELETE_VALUE)) {
    callTable("delete", () => table.delete(key));
    return;
  }

  const stored = callTable("get", () => table.get(key));
  let count = stored === null || stored === undefined ? 0n : decodeCount(key, stored);
  // The Rust counter adds to a u64 in a release build, where overflow
  // checks are off, so the count after U64_MAX is 0 there as here.
  count = (count + 1n) & U64_MAX;
  callTable("set", () => table.set(key, asciiBytes(count.toString())));
}

function openCounts() {
  if (counts === null) {
    counts = callTable("open", () => Table.open(COUNTS_TABLE));
  }
  return counts;
}

// Calls a table function and turns its `table-error` into an AgentError.
// The QuickJS bindings of componentize-qjs 0.4.5 throw an object whose
// `payload` is the variant as `{ tag, val }`. Anything else is a bug in
// this file and propagates, which traps.
function callTable(operation, call) {
  try {
    return call();
  } catch (error) {
    const variant = error?.payload;
    if (typeof variant?.tag !== "string") {
      throw error;
    }
    throw new AgentError(`table "${COUNTS_TABLE}": ${operation} failed: ${describeTableError(variant)}`);
  }
}

// Returns the count stored under `key`. Throws an AgentError unless the
// bytes are what serde_json reads into a u64: decimal digits without sign,
// fraction, exponent or leading zero, with optional JSON whitespace around
// them.
function decodeCount(key, stored) {
  let start = 0;
  let end = stored.length;
  while (start < end && isJsonWhitespace(stored[start])) {
    start += 1;
  }
  while (end > start && isJsonWhitespace(stored[end - 1])) {
    end -= 1;
  }
  const digits = Array.from(stored.slice(start, end));

  // u64::MAX has 20 digits, so a longer run is out of range.
  const wellFormed =
    digits.length > 0 &&
    digits.length <= 20 &&
    digits.every((byte) => byte >= 0x30 && byte <= 0x39) &&
    (digits.length === 1 || digits[0] !== 0x30);
  const count = wellFormed ? BigInt(String.fromCharCode(...digits)) : null;
  if (count === null || count > U64_MAX) {
    throw new AgentError(
      `table "${COUNTS_TABLE}": failed to decode value of key "${escapeAscii(key)}" with json: expected an integer from 0 to ${U64_MAX}`,
    );
  }
  return count;
}

function isJsonWhitespace(byte) {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
}

// Returns the text of a host `table-error`, worded as in the Rust SDK.
function describeTableError(variant) {
  switch (variant.tag) {
    case "undeclared":
      return `table "${variant.val}" is not declared in the agent's tables list`;
    case "key-too-large":
      return `key is ${variant.val} bytes, larger than the agent's max_key_bytes limit`;
    case "value-too-large":
      return `value is ${variant.val} bytes, larger than the agent's max_value_bytes limit`;
    case "storage":
      return `storage failed: ${variant.val}`;
    case "wrong-kind":
      return `table kind "${variant.val}" does not match the type that opened it, so declare table "${COUNTS_TABLE}" without a window in the host config`;
    default:
      // The remaining cases come only from windowed-table operations.
      return JSON.stringify(variant);
  }
}

function bytesEqual(bytes, expected) {
  if (bytes === null || bytes === undefined || bytes.length !== expected.length) {
    return false;
  }
  return expected.every((byte, index) => bytes[index] === byte);
}

function asciiBytes(text) {
  return Uint8Array.from(text, (character) => character.charCodeAt(0));
}

// Escapes bytes as Rust's `<[u8]>::escape_ascii` does.
function escapeAscii(bytes) {
  const escapes = { 0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r", 0x22: '\\"', 0x27: "\\'", 0x5c: "\\\\" };
  let text = "";
  for (const byte of bytes) {
    if (byte in escapes) {
      text += escapes[byte];
    } else if (byte >= 0x20 && byte < 0x7f) {
      text += String.fromCharCode(byte);
    } else {
      text += `\\x${byte.toString(16).padStart(2, "0")}`;
    }
  }
  return text;
}
