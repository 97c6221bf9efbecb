//! JSON lines input: one JSON object per line.
//!
//! Blank lines are skipped, a trailing `\r` is ignored and a UTF-8 byte order
//! mark before the first line is dropped. A row's value is the line with the
//! whitespace between tokens removed, so member order, duplicate members and
//! the spelling of numbers stay as written. serde_json validates each line
//! first, and a line that is not one JSON object is a malformed record.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    read_error, CountingFile, InputCounter, InputFormat, LoadError, Location, Progress, Row,
};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Rows of a JSON lines file, read one line at a time.
pub(super) struct JsonLinesRows {
    path: PathBuf,
    key_field: String,
    input: BufReader<CountingFile>,
    counter: InputCounter,
    /// Number of the line last read into `line`.
    line_number: u64,
    line: Vec<u8>,
    /// True when `line` contains a record that `next` has not returned yet.
    pending: bool,
    /// Set after a read error or the end of the file.
    finished: bool,
}

impl JsonLinesRows {
    /// Opens the rows and reads up to the first non-blank line.
    pub(super) fn open(
        path: &Path,
        input: CountingFile,
        key_field: &str,
    ) -> Result<Self, LoadError> {
        let counter = input.counter();
        let mut rows = Self {
            path: path.to_path_buf(),
            key_field: key_field.to_owned(),
            input: BufReader::with_capacity(64 * 1024, input),
            counter,
            line_number: 0,
            line: Vec::new(),
            pending: false,
            finished: false,
        };

        if !rows.read_record_line()? {
            return Err(LoadError::Empty {
                path: rows.path,
                format: InputFormat::JsonLines,
            });
        }
        rows.pending = true;
        Ok(rows)
    }

    pub(super) fn input_progress(&self) -> Progress {
        self.counter.progress()
    }

    /// Reads the next non-blank line into `self.line` without its line
    /// ending. Returns false at the end of the file.
    fn read_record_line(&mut self) -> Result<bool, LoadError> {
        loop {
            self.line.clear();
            let count = self
                .input
                .read_until(b'\n', &mut self.line)
                .map_err(|error| read_error(&self.path, error))?;
            if count == 0 {
                return Ok(false);
            }
            self.line_number += 1;

            if self.line.ends_with(b"\n") {
                self.line.pop();
            }
            if self.line.ends_with(b"\r") {
                self.line.pop();
            }
            if self.line_number == 1 && self.line.starts_with(UTF8_BOM) {
                self.line.drain(..UTF8_BOM.len());
            }
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
        }
    }

    fn parse_line(&self) -> Result<Row, LoadError> {
        let location = Location::Line(self.line_number);
        let malformed = |message: String| LoadError::Malformed {
            path: self.path.clone(),
            location,
            format: InputFormat::JsonLines,
            message,
        };

        let value: Value = serde_json::from_slice(&self.line)
            .map_err(|error| malformed(describe_json_error(&error)))?;
        let Value::Object(object) = value else {
            return Err(malformed(format!(
                "expected a JSON object, found {}; each line must hold one object, so convert a \
                 JSON array with `jq -c '.[]'`",
                json_type_name(&value)
            )));
        };

        let key = match object.get(&self.key_field) {
            None => {
                let mut present: Vec<String> = object.keys().cloned().collect();
                present.sort();
                return Err(LoadError::KeyFieldMissing {
                    path: self.path.clone(),
                    location,
                    field: self.key_field.clone(),
                    present,
                });
            }
            Some(Value::Null) => {
                return Err(LoadError::KeyFieldNull {
                    path: self.path.clone(),
                    location,
                    field: self.key_field.clone(),
                })
            }
            Some(Value::String(text)) => text.as_bytes().to_vec(),
            Some(other) => other.to_string().into_bytes(),
        };

        Ok(Row {
            key,
            value: remove_whitespace(&self.line),
        })
    }
}

impl Iterator for JsonLinesRows {
    type Item = Result<Row, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if !self.pending {
            match self.read_record_line() {
                Ok(true) => {}
                Ok(false) => {
                    self.finished = true;
                    return None;
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(error));
                }
            }
        }
        self.pending = false;
        Some(self.parse_line())
    }
}

/// Formats a serde_json error with the column only, because the line number
/// inside one line is always 1 and the caller reports the file's line.
fn describe_json_error(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match full.strip_suffix(&position) {
        Some(message) => format!("{message} at column {}", error.column()),
        None => full,
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Copies valid JSON text without the whitespace between tokens.
///
/// The input must already be valid JSON, because the scan only tracks
/// whether it is inside a string literal.
fn remove_whitespace(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                in_string = true;
                out.push(byte);
            }
            _ => out.push(byte),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{read_rows, InputFormat, LoadError, Location, Row};
    use std::io::Write;
    use std::path::PathBuf;

    fn write_file(dir: &tempfile::TempDir, contents: &[u8]) -> PathBuf {
        let path = dir.path().join("input.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(contents).unwrap();
        path
    }

    fn read_all(contents: &[u8], key_field: &str) -> (PathBuf, Vec<Result<Row, LoadError>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, contents);
        let rows = read_rows(&path, InputFormat::JsonLines, key_field)
            .unwrap()
            .collect();
        (path, rows)
    }

    #[test]
    fn string_key_without_quotes() {
        let (_, rows) = read_all(b"{\"id\": \"a-1\", \"n\": 5}\n", "id");
        let row = rows[0].as_ref().unwrap();
        assert_eq!(row.key, b"a-1");
        assert_eq!(row.value, br#"{"id":"a-1","n":5}"#);
    }

    #[test]
    fn number_and_bool_keys_as_json_text() {
        let (_, rows) = read_all(
            b"{\"id\":42}\n{\"id\":-1.5}\n{\"id\":true}\n{\"id\":[1, 2]}\n",
            "id",
        );
        let keys: Vec<Vec<u8>> = rows.into_iter().map(|row| row.unwrap().key).collect();
        assert_eq!(keys[0], b"42");
        assert_eq!(keys[1], b"-1.5");
        assert_eq!(keys[2], b"true");
        assert_eq!(keys[3], b"[1,2]");
    }

    #[test]
    fn value_keeps_order_and_strings() {
        let line = b"{ \"zeta\" : 1 ,\t\"alpha\": \"a b\\\" c\", \"n\": 1.50, \"o\": {\"y\": [1, 2], \"x\": null} }\n";
        let (_, rows) = read_all(line, "zeta");
        let row = rows[0].as_ref().unwrap();
        assert_eq!(
            String::from_utf8(row.value.clone()).unwrap(),
            r#"{"zeta":1,"alpha":"a b\" c","n":1.50,"o":{"y":[1,2],"x":null}}"#
        );
    }

    #[test]
    fn skips_blank_lines_crlf_and_bom() {
        let (_, rows) = read_all(
            b"\xEF\xBB\xBF{\"id\":\"a\"}\r\n\r\n   \n{\"id\":\"b\"}",
            "id",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].as_ref().unwrap().value, br#"{"id":"a"}"#);
        assert_eq!(rows[1].as_ref().unwrap().value, br#"{"id":"b"}"#);
    }

    #[test]
    fn empty_file_contains_no_records() {
        let dir = tempfile::tempdir().unwrap();
        for contents in [&b""[..], b"\n  \n\r\n"] {
            let path = write_file(&dir, contents);
            let error = read_rows(&path, InputFormat::JsonLines, "id").unwrap_err();
            assert!(matches!(error, LoadError::Empty { .. }));
            assert_eq!(
                error.to_string(),
                format!(
                    "{} contains no records; expected at least one JSON lines record",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn malformed_line_reports_line_and_continues() {
        let (path, rows) = read_all(b"{\"id\":1}\n\n{\"id\": 2,,}\n{\"id\":3}\n", "id");
        assert_eq!(rows.len(), 3);
        let error = rows[1].as_ref().unwrap_err();
        assert!(matches!(
            error,
            LoadError::Malformed {
                location: Location::Line(3),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: line 3: malformed JSON lines record: key must be a string at column 10",
                path.display()
            )
        );
        assert_eq!(rows[2].as_ref().unwrap().key, b"3");
    }

    #[test]
    fn line_that_is_not_an_object() {
        let (path, rows) = read_all(b"[{\"id\":1}]\n", "id");
        assert_eq!(
            rows[0].as_ref().unwrap_err().to_string(),
            format!(
                "{}: line 1: malformed JSON lines record: expected a JSON object, found an array; \
                 each line must hold one object, so convert a JSON array with `jq -c '.[]'`",
                path.display()
            )
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let (_, rows) = read_all(b"{\"id\":\"\xFF\"}\n", "id");
        assert!(matches!(
            rows[0].as_ref().unwrap_err(),
            LoadError::Malformed {
                location: Location::Line(1),
                ..
            }
        ));
    }

    #[test]
    fn key_field_missing_lists_fields() {
        let (path, rows) = read_all(b"{\"id\":1}\n{\"name\":\"x\",\"age\":3}\n", "id");
        let error = rows[1].as_ref().unwrap_err();
        assert!(matches!(
            error,
            LoadError::KeyFieldMissing {
                location: Location::Line(2),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: line 2: key field \"id\" is missing; the fields present are \"age\", \"name\"; \
                 choose one of them as the key field",
                path.display()
            )
        );
    }

    #[test]
    fn key_field_null() {
        let (path, rows) = read_all(b"{\"id\":null}\n", "id");
        let error = rows[0].as_ref().unwrap_err();
        assert!(matches!(
            error,
            LoadError::KeyFieldNull {
                location: Location::Line(1),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: line 1: key field \"id\" is null; every record needs a key, so fill it in or \
                 choose another key field",
                path.display()
            )
        );
    }

    #[test]
    fn streams_many_lines() {
        let mut contents = Vec::new();
        for i in 0..50_000 {
            writeln!(contents, "{{\"id\":{i},\"name\":\"n{i}\"}}").unwrap();
        }
        let (_, rows) = read_all(&contents, "id");
        assert_eq!(rows.len(), 50_000);
        assert_eq!(rows[49_999].as_ref().unwrap().key, b"49999");
        assert_eq!(
            rows[49_999].as_ref().unwrap().value,
            br#"{"id":49999,"name":"n49999"}"#
        );
    }
}
