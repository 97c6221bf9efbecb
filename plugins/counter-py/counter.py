"""Count records per key: the Python version of the Rust agent `counter`.

Table `counts` is keyed by the record key as raw bytes, so empty and
non-UTF-8 keys work, and a record without a key counts under the empty
key. The value is the count as a JSON integer in ASCII, such as `3`. A
record whose value is exactly the bytes `delete` removes the key instead
of counting. Error messages follow the format of the Rust SDK
(`tablehost-guest`), so dead letters read the same for either agent.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import tables

COUNTS_TABLE = "counts"

# The record value that deletes the record's key from `counts`.
DELETE_VALUE = b"delete"

U64_MAX = 2**64 - 1

# A stored count as serde_json reads it into a u64: decimal digits without
# sign, fraction, exponent or leading zero, with optional JSON whitespace
# around them.
COUNT_PATTERN = re.compile(rb"[ \t\n\r]*(0|[1-9][0-9]*)[ \t\n\r]*")

# The `counts` handle, opened on the first event and kept for the
# instance's life, as the Rust SDK does.
_counts = None


class AgentError(Exception):
    """An error of one event, reported to the host in the `handle` result."""


class Handler(exports.Handler):
    def handle(self, events):
        for event in events:
            try:
                count_event(event)
            except AgentError as error:
                # Kafka topic names contain only ASCII letters, digits, `.`,
                # `_` and `-`, so plain quotes match Rust's `{:?}` output.
                raise Err(
                    f'failed to handle event at topic "{event.topic}" '
                    f"partition {event.partition} offset {event.offset}: {error}"
                ) from None


def count_event(event):
    """Add one to the count of the event's key, or delete the key."""
    counts = open_counts()
    key = event.key if event.key is not None else b""

    if event.value == DELETE_VALUE:
        call_table("delete", counts.delete, key)
        return

    stored = call_table("get", counts.get, key)
    count = 0 if stored is None else decode_count(key, stored)
    # The Rust counter adds to a u64 in a release build, where overflow
    # checks are off, so the count after U64_MAX is 0 there as here.
    count = (count + 1) & U64_MAX
    call_table("set", counts.set, key, str(count).encode("ascii"))


def open_counts():
    global _counts
    if _counts is None:
        _counts = call_table("open", tables.Table.open, COUNTS_TABLE)
    return _counts


def call_table(operation, function, *args):
    """Call a table function and turn its `table-error` into an AgentError."""
    try:
        return function(*args)
    except Err as error:
        raise AgentError(
            f'table "{COUNTS_TABLE}": {operation} failed: {describe_table_error(error.value)}'
        ) from None


def decode_count(key, stored):
    """Return the count stored under `key`, or raise AgentError when the
    bytes are not a JSON integer in the u64 range."""
    match = COUNT_PATTERN.fullmatch(stored)
    if match is None or int(match.group(1)) > U64_MAX:
        raise AgentError(
            f'table "{COUNTS_TABLE}": failed to decode value of key "{escape_ascii(key)}" '
            f"with json: expected an integer from 0 to {U64_MAX}"
        )
    return int(match.group(1))


def describe_table_error(error):
    """Return the text of a host `table-error`, worded as in the Rust SDK."""
    if isinstance(error, tables.TableError_Undeclared):
        return f'table "{error.value}" is not declared in the agent\'s tables list'
    if isinstance(error, tables.TableError_KeyTooLarge):
        return f"key is {error.value} bytes, larger than the agent's max_key_bytes limit"
    if isinstance(error, tables.TableError_ValueTooLarge):
        return f"value is {error.value} bytes, larger than the agent's max_value_bytes limit"
    if isinstance(error, tables.TableError_Storage):
        return f"storage failed: {error.value}"
    if isinstance(error, tables.TableError_WrongKind):
        return (
            f'table kind "{error.value}" does not match the type that opened it, '
            f'so declare table "{COUNTS_TABLE}" without a window in the host config'
        )
    # The remaining cases come only from windowed-table operations.
    return repr(error)


def escape_ascii(data):
    """Escape bytes as Rust's `<[u8]>::escape_ascii` does."""
    escapes = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x22: '\\"', 0x27: "\\'", 0x5C: "\\\\"}
    parts = []
    for byte in data:
        if byte in escapes:
            parts.append(escapes[byte])
        elif 0x20 <= byte < 0x7F:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    return "".join(parts)
