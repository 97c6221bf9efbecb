//! CSV input: a header row of field names, then one record per row.
//!
//! Each cell becomes a JSON value of the member named by its header column.
//! An empty cell is `null`, an integer in the 64-bit range is an integer and
//! a finite float (`1.5`, `.5`, `1e3`) is a float. Any other text is a string,
//! including `NaN`, `inf` and integers too large for 64 bits. Numbers are
//! written in serde_json's form, so `+7` and `007` become `7` and `1e3`
//! becomes `1000.0`. The csv crate parses RFC 4180 quoting, skips empty lines
//! and drops a UTF-8 byte order mark, and every record must have as many
//! fields as the header.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ::csv::{ErrorKind, ReaderBuilder, StringRecord};

use super::{
    push_json_string, read_error, CountingFile, InputCounter, InputFormat, LoadError, Location,
    Progress, Row,
};

/// Rows of a CSV file, read one record at a time.
pub(super) struct CsvRows {
    path: PathBuf,
    key_field: String,
    key_index: usize,
    reader: ::csv::Reader<CountingFile>,
    counter: InputCounter,
    /// Bytes written before each cell: `{"name":` for the first column and
    /// `,"name":` for the others.
    member_prefixes: Vec<Vec<u8>>,
    record: StringRecord,
    /// Line of the last record read, for errors that carry no position.
    last_line: u64,
    /// The first record or its error, read by `open` and not yet returned.
    pending: Option<Result<(), ::csv::Error>>,
    /// Set after a read error or the end of the file.
    finished: bool,
}

impl CsvRows {
    /// Opens the rows, checks the header and reads the first record.
    pub(super) fn open(
        path: &Path,
        input: CountingFile,
        key_field: &str,
    ) -> Result<Self, LoadError> {
        let counter = input.counter();
        let mut reader = ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .buffer_capacity(64 * 1024)
            .from_reader(input);

        let headers = match reader.headers() {
            Ok(headers) => headers.clone(),
            Err(error) => return Err(fatal_or_malformed(path, error, Location::Header)),
        };

        // Read the first record before checking the header, so a file with
        // no rows is reported as empty and not as a header problem.
        let mut record = StringRecord::new();
        let pending = match reader.read_record(&mut record) {
            Ok(true) => Ok(()),
            Ok(false) => {
                return Err(LoadError::Empty {
                    path: path.to_path_buf(),
                    format: InputFormat::Csv,
                })
            }
            Err(error) if error.is_io_error() => {
                return Err(fatal_or_malformed(path, error, Location::Line(1)))
            }
            Err(error) => Err(error),
        };

        let mut seen = HashSet::new();
        for name in headers.iter() {
            if !seen.insert(name) {
                return Err(LoadError::DuplicateColumn {
                    path: path.to_path_buf(),
                    name: name.to_owned(),
                });
            }
        }
        let Some(key_index) = headers.iter().position(|name| name == key_field) else {
            return Err(LoadError::KeyFieldMissing {
                path: path.to_path_buf(),
                location: Location::Header,
                field: key_field.to_owned(),
                present: headers.iter().map(str::to_owned).collect(),
            });
        };

        let member_prefixes = headers
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut prefix = vec![if index == 0 { b'{' } else { b',' }];
                push_json_string(&mut prefix, name);
                prefix.push(b':');
                prefix
            })
            .collect();

        Ok(Self {
            path: path.to_path_buf(),
            key_field: key_field.to_owned(),
            key_index,
            reader,
            counter,
            member_prefixes,
            record,
            last_line: 1,
            pending: Some(pending),
            finished: false,
        })
    }

    pub(super) fn input_progress(&self) -> Progress {
        self.counter.progress()
    }

    /// Converts `self.record` into a row.
    fn build_row(&self) -> Result<Row, LoadError> {
        let location = Location::Line(self.last_line);
        let mut value =
            Vec::with_capacity(2 * self.record.as_slice().len() + 16 * self.member_prefixes.len());
        let mut key = None;

        for (index, (prefix, text)) in self
            .member_prefixes
            .iter()
            .zip(self.record.iter())
            .enumerate()
        {
            value.extend_from_slice(prefix);
            let start = value.len();
            let cell = Cell::parse(text);
            cell.push_json(&mut value);
            if index == self.key_index {
                key = match cell {
                    Cell::Null => None,
                    Cell::Text(text) => Some(text.as_bytes().to_vec()),
                    Cell::Integer(_) | Cell::Unsigned(_) | Cell::Float(_) => {
                        Some(value[start..].to_vec())
                    }
                };
            }
        }
        value.push(b'}');

        let Some(key) = key else {
            return Err(LoadError::KeyFieldNull {
                path: self.path.clone(),
                location,
                field: self.key_field.clone(),
            });
        };
        Ok(Row { key, value })
    }

    /// Turns a csv error into the item to return, and ends the iteration
    /// unless the error is confined to one record.
    fn record_error(&mut self, error: ::csv::Error) -> LoadError {
        let line = error
            .position()
            .map_or(self.last_line + 1, |position| position.line());
        self.last_line = line;
        if error.is_io_error() {
            self.finished = true;
        }
        fatal_or_malformed(&self.path, error, Location::Line(line))
    }
}

impl Iterator for CsvRows {
    type Item = Result<Row, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let read = match self.pending.take() {
            Some(read) => read.map(|()| true),
            None => self.reader.read_record(&mut self.record),
        };
        match read {
            Ok(true) => {
                if let Some(position) = self.record.position() {
                    self.last_line = position.line();
                }
                Some(self.build_row())
            }
            Ok(false) => {
                self.finished = true;
                None
            }
            Err(error) => Some(Err(self.record_error(error))),
        }
    }
}

/// Maps a csv error to a read error for I/O failures and to a malformed
/// record otherwise.
fn fatal_or_malformed(path: &Path, error: ::csv::Error, location: Location) -> LoadError {
    let message = match error.kind() {
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields as in the header, found {len}")
        }
        ErrorKind::Utf8 { err, .. } => format!(
            "field {} is not valid UTF-8 after byte {}; save the file as UTF-8",
            err.field() + 1,
            err.valid_up_to()
        ),
        _ => {
            let text = error.to_string();
            match error.into_kind() {
                ErrorKind::Io(error) => return read_error(path, error),
                _ => text,
            }
        }
    };
    LoadError::Malformed {
        path: path.to_path_buf(),
        location,
        format: InputFormat::Csv,
        message,
    }
}

/// Typed value of one CSV cell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Null,
    Integer(i64),
    /// An integer above `i64::MAX` that fits in a `u64`.
    Unsigned(u64),
    Float(f64),
    Text(&'a str),
}

impl<'a> Cell<'a> {
    fn parse(text: &'a str) -> Self {
        if text.is_empty() {
            return Self::Null;
        }
        if is_integer_syntax(text) {
            if let Ok(number) = text.parse::<i64>() {
                return Self::Integer(number);
            }
            if let Ok(number) = text.parse::<u64>() {
                return Self::Unsigned(number);
            }
            // An f64 would round an integer of more than 64 bits, so the
            // exact digits are kept as a string.
            return Self::Text(text);
        }
        match text.parse::<f64>() {
            Ok(number) if number.is_finite() => Self::Float(number),
            _ => Self::Text(text),
        }
    }

    fn push_json(&self, out: &mut Vec<u8>) {
        let result = match self {
            Self::Null => {
                out.extend_from_slice(b"null");
                Ok(())
            }
            Self::Integer(number) => serde_json::to_writer(&mut *out, number),
            Self::Unsigned(number) => serde_json::to_writer(&mut *out, number),
            Self::Float(number) => serde_json::to_writer(&mut *out, number),
            Self::Text(text) => {
                push_json_string(out, text);
                Ok(())
            }
        };
        result.expect("serializing a number into a Vec cannot fail");
    }
}

/// Returns true for an optional sign followed by one or more ASCII digits.
fn is_integer_syntax(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::super::{read_rows, InputFormat, LoadError, Location, Row};
    use super::Cell;
    use std::io::Write;
    use std::path::PathBuf;

    fn write_file(dir: &tempfile::TempDir, contents: &[u8]) -> PathBuf {
        let path = dir.path().join("input.csv");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(contents).unwrap();
        path
    }

    fn read_all(contents: &[u8], key_field: &str) -> (PathBuf, Vec<Result<Row, LoadError>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, contents);
        let rows = read_rows(&path, InputFormat::Csv, key_field)
            .unwrap()
            .collect();
        (path, rows)
    }

    fn open_error(contents: &[u8], key_field: &str) -> (PathBuf, LoadError) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, contents);
        let error = read_rows(&path, InputFormat::Csv, key_field).unwrap_err();
        (path, error)
    }

    #[test]
    fn cell_types() {
        assert_eq!(Cell::parse(""), Cell::Null);
        assert_eq!(Cell::parse("42"), Cell::Integer(42));
        assert_eq!(Cell::parse("-7"), Cell::Integer(-7));
        assert_eq!(Cell::parse("+7"), Cell::Integer(7));
        assert_eq!(
            Cell::parse("18446744073709551615"),
            Cell::Unsigned(u64::MAX)
        );
        assert_eq!(
            Cell::parse("123456789012345678901234"),
            Cell::Text("123456789012345678901234")
        );
        assert_eq!(Cell::parse("1.5"), Cell::Float(1.5));
        assert_eq!(Cell::parse(".5"), Cell::Float(0.5));
        assert_eq!(Cell::parse("1e3"), Cell::Float(1000.0));
        assert_eq!(Cell::parse("NaN"), Cell::Text("NaN"));
        assert_eq!(Cell::parse("inf"), Cell::Text("inf"));
        assert_eq!(Cell::parse("1e400"), Cell::Text("1e400"));
        assert_eq!(Cell::parse(" 5"), Cell::Text(" 5"));
        assert_eq!(Cell::parse("-"), Cell::Text("-"));
        assert_eq!(Cell::parse("LAS"), Cell::Text("LAS"));
    }

    #[test]
    fn header_names_members_in_order() {
        let (_, rows) = read_all(
            b"origin,delay,ratio,note,empty\nLAS,33,0.5,\"a, \"\"b\"\"\",\n",
            "origin",
        );
        let row = rows[0].as_ref().unwrap();
        assert_eq!(row.key, b"LAS");
        assert_eq!(
            String::from_utf8(row.value.clone()).unwrap(),
            r#"{"origin":"LAS","delay":33,"ratio":0.5,"note":"a, \"b\"","empty":null}"#
        );
    }

    #[test]
    fn number_key_as_json_text() {
        let (_, rows) = read_all(b"id,name\n007,a\n1.50,b\n", "id");
        assert_eq!(rows[0].as_ref().unwrap().key, b"7");
        assert_eq!(rows[1].as_ref().unwrap().key, b"1.5");
    }

    #[test]
    fn crlf_bom_and_blank_lines() {
        let (_, rows) = read_all(b"\xEF\xBB\xBFid,n\r\na,1\r\n\r\nb,2\r\n", "id");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].as_ref().unwrap().value, br#"{"id":"a","n":1}"#);
        assert_eq!(rows[1].as_ref().unwrap().value, br#"{"id":"b","n":2}"#);
    }

    #[test]
    fn empty_file_contains_no_records() {
        for contents in [&b""[..], b"id,name\n"] {
            let (path, error) = open_error(contents, "id");
            assert!(matches!(error, LoadError::Empty { .. }));
            assert_eq!(
                error.to_string(),
                format!(
                    "{} contains no records; expected at least one CSV record",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn key_field_missing_from_header() {
        let (path, error) = open_error(b"name,age\nx,3\n", "id");
        assert!(matches!(
            error,
            LoadError::KeyFieldMissing {
                location: Location::Header,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: header: key field \"id\" is missing; the fields present are \"name\", \"age\"; \
                 choose one of them as the key field",
                path.display()
            )
        );
    }

    #[test]
    fn key_field_empty_is_null() {
        let (path, rows) = read_all(b"id,name\na,x\n,y\nc,z\n", "id");
        let error = rows[1].as_ref().unwrap_err();
        assert!(matches!(
            error,
            LoadError::KeyFieldNull {
                location: Location::Line(3),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: line 3: key field \"id\" is null; every record needs a key, so fill it in or \
                 choose another key field",
                path.display()
            )
        );
        assert_eq!(rows[2].as_ref().unwrap().key, b"c");
    }

    #[test]
    fn wrong_field_count_is_malformed() {
        let (path, rows) = read_all(b"id,name\na,x\nb,y,extra\nc,z\n", "id");
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
                "{}: line 3: malformed CSV record: expected 2 fields as in the header, found 3",
                path.display()
            )
        );
        assert_eq!(rows[2].as_ref().unwrap().key, b"c");
    }

    #[test]
    fn malformed_first_record_is_first_item() {
        let (path, rows) = read_all(b"id,name\nonly-one\nb,y\n", "id");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].as_ref().unwrap_err().to_string(),
            format!(
                "{}: line 2: malformed CSV record: expected 2 fields as in the header, found 1",
                path.display()
            )
        );
        assert_eq!(rows[1].as_ref().unwrap().key, b"b");
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let (path, rows) = read_all(b"id,name\na,\xFFx\n", "id");
        assert_eq!(
            rows[0].as_ref().unwrap_err().to_string(),
            format!(
                "{}: line 2: malformed CSV record: field 2 is not valid UTF-8 after byte 0; save the \
                 file as UTF-8",
                path.display()
            )
        );
    }

    #[test]
    fn quoted_multiline_record_reports_first_line() {
        let (_, rows) = read_all(b"id,text\na,\"one\ntwo\"\n,missing\n", "id");
        assert_eq!(
            rows[0].as_ref().unwrap().value,
            br#"{"id":"a","text":"one\ntwo"}"#
        );
        assert!(matches!(
            rows[1].as_ref().unwrap_err(),
            LoadError::KeyFieldNull {
                location: Location::Line(4),
                ..
            }
        ));
    }

    #[test]
    fn duplicate_column_rejected() {
        let (path, error) = open_error(b"id,name,name\na,x,y\n", "id");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: header: duplicate column name \"name\"; rename one of the columns",
                path.display()
            )
        );
    }
}
