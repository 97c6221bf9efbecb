//! Reading an input file into keyed records for a Kafka topic.
//!
//! [`read_rows`] opens a JSON lines, CSV or Parquet file and returns a
//! [`RowReader`], an iterator that decodes one [`Row`] at a time, so a file of
//! millions of rows never sits in memory at once. [`InputFormat::from_path`]
//! picks the format from the file extension, and a caller may pass another
//! format to override it.
//!
//! # Values and keys
//!
//! A row's value is a compact JSON object with one member per field, in the
//! order of the input: the order of the line for JSON lines, the header for
//! CSV and the schema for Parquet.
//!
//! | format     | input                                | JSON                                   |
//! |------------|--------------------------------------|----------------------------------------|
//! | JSON lines | one object per non-blank line        | the line with whitespace removed       |
//! | CSV        | integer or float text                | number                                 |
//! | CSV        | empty cell                           | `null`                                 |
//! | CSV        | any other text                       | string                                 |
//! | Parquet    | integer, float, boolean              | number, boolean                        |
//! | Parquet    | string                               | string                                 |
//! | Parquet    | NaN or infinite float                | `null`                                 |
//! | Parquet    | timestamp (millis, micros, nanos)    | `"YYYY-MM-DD HH:MM:SS[.fff]"` string   |
//! | Parquet    | date, time of day                    | `"YYYY-MM-DD"`, `"HH:MM:SS[.fff]"`      |
//! | Parquet    | decimal                              | number with `scale` digits after the point |
//! | Parquet    | binary                               | string if valid UTF-8, base64 otherwise |
//! | Parquet    | group, list, map                     | object, array, object                  |
//!
//! A timestamp's fraction has as many digits as its unit (3, 6 or 9) and is
//! left out when it is zero.
//!
//! A row's key is the value of the key field: the UTF-8 bytes of a string
//! (without quotes), or the JSON text of a number, boolean, array or object.
//! A record whose key field is null or missing is an error.
//!
//! # Errors and positions
//!
//! Errors name the file and a [`Location`]. Line numbers (JSON lines, CSV)
//! and row numbers (Parquet) start at 1. A malformed record or a missing or
//! null key is reported for that record only, and the next call to `next`
//! continues with the record after it. A read or decode error ends the
//! iteration. [`read_rows`] itself fails on problems with the whole file,
//! such as a missing file, no records, or no key column in the CSV header or
//! the Parquet schema.

mod csv;
mod jsonl;
mod parquet;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

/// Number of rows between two updates of an attached progress bar.
const PROGRESS_BAR_STEP: u64 = 4096;

/// Format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    JsonLines,
    /// Comma-separated values with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`).
    Parquet,
}

impl InputFormat {
    /// File extensions that [`InputFormat::from_path`] accepts, without the dot.
    pub const EXTENSIONS: [&'static str; 5] = ["jsonl", "ndjson", "json", "csv", "parquet"];

    /// Format names that [`InputFormat::from_str`] accepts.
    pub const NAMES: [&'static str; 3] = ["jsonl", "csv", "parquet"];

    /// Picks the format from the extension of `path`, ignoring ASCII case.
    ///
    /// # Errors
    ///
    /// [`LoadError::UnknownExtension`] when the extension is missing or not
    /// one of [`InputFormat::EXTENSIONS`].
    pub fn from_path(path: &Path) -> Result<Self, LoadError> {
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match extension.as_deref() {
            Some("jsonl" | "ndjson" | "json") => Ok(Self::JsonLines),
            Some("csv") => Ok(Self::Csv),
            Some("parquet") => Ok(Self::Parquet),
            _ => Err(LoadError::UnknownExtension {
                path: path.to_path_buf(),
                extension,
            }),
        }
    }

    /// Returns the short name that [`InputFormat::from_str`] parses.
    pub fn name(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JsonLines => "JSON lines",
            Self::Csv => "CSV",
            Self::Parquet => "Parquet",
        })
    }
}

impl FromStr for InputFormat {
    type Err = LoadError;

    /// Parses a format name as given on a command line: `jsonl` (or `ndjson`,
    /// `json`), `csv` or `parquet`, ignoring ASCII case.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            _ => Err(LoadError::UnknownFormat {
                name: name.to_owned(),
            }),
        }
    }
}

/// One input record, ready to send to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Value of the key field: the UTF-8 bytes of a string, or the JSON text
    /// of any other value.
    pub key: Vec<u8>,
    /// The whole record as a compact JSON object.
    pub value: Vec<u8>,
}

/// Place in an input file that an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Line of a JSON lines or CSV file, starting at 1. A CSV record that
    /// spans several lines is reported at its first line.
    Line(u64),
    /// Row of a Parquet file, starting at 1.
    Row(u64),
    /// Header row of a CSV file.
    Header,
    /// Schema of a Parquet file.
    Schema,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(line) => write!(f, "line {line}"),
            Self::Row(row) => write!(f, "row {row}"),
            Self::Header => f.write_str("header"),
            Self::Schema => f.write_str("schema"),
        }
    }
}

/// Error from opening or reading an input file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(
    missing_docs,
    reason = "variant fields are the values that each message shows, named for what they contain"
)]
pub enum LoadError {
    /// The input file does not exist.
    #[error("{}: file not found; check the path", .path.display())]
    NotFound { path: PathBuf },

    /// The input path exists but is a directory or another non-file.
    #[error("{}: not a regular file; pass the path of an input file", .path.display())]
    NotAFile { path: PathBuf },

    /// Opening or reading the file failed.
    #[error("failed to read {}: {error}", .path.display())]
    Read { path: PathBuf, error: io::Error },

    /// The file has no records: no bytes, only blank lines, only a CSV header
    /// or a Parquet file with zero rows.
    #[error("{} contains no records; expected at least one {format} record", .path.display())]
    Empty { path: PathBuf, format: InputFormat },

    /// A record could not be parsed.
    #[error("{}: {location}: malformed {format} record: {message}", .path.display())]
    Malformed {
        path: PathBuf,
        location: Location,
        format: InputFormat,
        message: String,
    },

    /// A record, the CSV header or the Parquet schema has no key field.
    #[error(
        "{}: {location}: key field \"{field}\" is missing; the fields present are {}; \
         choose one of them as the key field",
        .path.display(),
        quote_list(.present)
    )]
    KeyFieldMissing {
        path: PathBuf,
        location: Location,
        field: String,
        present: Vec<String>,
    },

    /// A record's key field is null.
    #[error(
        "{}: {location}: key field \"{field}\" is null; every record needs a key, \
         so fill it in or choose another key field",
        .path.display()
    )]
    KeyFieldNull {
        path: PathBuf,
        location: Location,
        field: String,
    },

    /// The CSV header names a column twice, so the JSON object would have
    /// two members with one name.
    #[error("{}: header: duplicate column name \"{name}\"; rename one of the columns", .path.display())]
    DuplicateColumn { path: PathBuf, name: String },

    /// The path has no extension or one that maps to no format.
    #[error(
        "{}: {}; use one of .jsonl, .ndjson, .json, .csv, .parquet or set the input format explicitly",
        .path.display(),
        describe_extension(.extension.as_deref())
    )]
    UnknownExtension {
        path: PathBuf,
        extension: Option<String>,
    },

    /// A format name given by the user is not one of [`InputFormat::NAMES`].
    #[error("unknown input format \"{name}\"; use one of jsonl, csv, parquet")]
    UnknownFormat { name: String },

    /// A Parquet column has a type that the loader cannot convert to JSON.
    #[error(
        "{}: schema: column \"{column}\" has type {column_type}, which cannot be converted to JSON; \
         drop or cast the column",
        .path.display()
    )]
    UnsupportedColumn {
        path: PathBuf,
        column: String,
        column_type: String,
    },

    /// The Parquet footer or schema could not be read.
    #[error(
        "{}: cannot open as a Parquet file: {error}; check that the file is complete and in Parquet format",
        .path.display()
    )]
    ParquetOpen {
        path: PathBuf,
        error: ::parquet::errors::ParquetError,
    },

    /// Decoding Parquet data pages failed.
    #[error("{}: row {row}: failed to decode Parquet data: {error}", .path.display())]
    ParquetRead {
        path: PathBuf,
        row: u64,
        error: ::parquet::errors::ParquetError,
    },
}

fn quote_list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    quoted.join(", ")
}

fn describe_extension(extension: Option<&str>) -> String {
    match extension {
        Some(extension) => format!("unknown file extension \".{extension}\""),
        None => "no file extension".to_owned(),
    }
}

/// Unit of a [`Progress`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressUnit {
    /// Rows, for Parquet files, whose footer stores the row count.
    Rows,
    /// Bytes of the file, for JSON lines and CSV, whose row count is unknown
    /// until the end.
    Bytes,
}

/// How far a [`RowReader`] has read, for drawing a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Unit of `position` and `total`.
    pub unit: ProgressUnit,
    /// Rows read so far, including rows returned as errors, or bytes read
    /// from the file so far. Bytes run ahead of the rows returned by up to
    /// one read buffer.
    pub position: u64,
    /// Rows in the file, or the file size in bytes when it was opened.
    pub total: u64,
}

/// Streaming iterator over the rows of an input file, created by [`read_rows`].
///
/// Each call to `next` decodes one record. See the module documentation for
/// which errors end the iteration.
pub struct RowReader {
    path: PathBuf,
    format: InputFormat,
    source: Source,
    rows_returned: u64,
    progress_bar: Option<ProgressBar>,
}

enum Source {
    JsonLines(jsonl::JsonLinesRows),
    Csv(csv::CsvRows),
    Parquet(parquet::ParquetRows),
}

/// Opens `path` as `format` and returns an iterator over its rows, keyed by
/// the field named `key_field`.
///
/// The first record is read before this returns, so an empty file fails here
/// and not on the first call to `next`.
///
/// # Errors
///
/// - [`LoadError::NotFound`], [`LoadError::NotAFile`] or [`LoadError::Read`]
///   when the file cannot be opened or read.
/// - [`LoadError::Empty`] when the file has no records.
/// - [`LoadError::ParquetOpen`] when a Parquet footer is invalid, and
///   [`LoadError::UnsupportedColumn`] for a Parquet column type that has no
///   JSON mapping.
/// - [`LoadError::DuplicateColumn`] for a CSV header that repeats a name.
/// - [`LoadError::KeyFieldMissing`] when the CSV header or the Parquet schema
///   has no column named `key_field`.
///
/// A malformed first record, or one whose key is missing or null, is not an
/// error here but the first item of the iterator.
pub fn read_rows(
    path: &Path,
    format: InputFormat,
    key_field: &str,
) -> Result<RowReader, LoadError> {
    let file = open_file(path)?;
    let source = match format {
        InputFormat::JsonLines => {
            let input = CountingFile::new(path, file)?;
            Source::JsonLines(jsonl::JsonLinesRows::open(path, input, key_field)?)
        }
        InputFormat::Csv => {
            let input = CountingFile::new(path, file)?;
            Source::Csv(csv::CsvRows::open(path, input, key_field)?)
        }
        InputFormat::Parquet => Source::Parquet(parquet::ParquetRows::open(path, file, key_field)?),
    };

    let reader = RowReader {
        path: path.to_path_buf(),
        format,
        source,
        rows_returned: 0,
        progress_bar: None,
    };
    let progress = reader.progress();
    tracing::debug!(
        path = %path.display(),
        %format,
        key_field,
        unit = ?progress.unit,
        total = progress.total,
        "load input opened"
    );
    Ok(reader)
}

impl RowReader {
    /// Returns the path that was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the format the file is read as.
    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// Returns the number of rows in the file when it is known without
    /// reading the file: from the footer of a Parquet file, and `None` for
    /// JSON lines and CSV.
    pub fn total_rows(&self) -> Option<u64> {
        match &self.source {
            Source::Parquet(rows) => Some(rows.total_rows()),
            Source::JsonLines(_) | Source::Csv(_) => None,
        }
    }

    /// Returns how far the reader has got, in rows for Parquet and in bytes
    /// of the file for JSON lines and CSV.
    pub fn progress(&self) -> Progress {
        match &self.source {
            Source::Parquet(rows) => Progress {
                unit: ProgressUnit::Rows,
                position: rows.rows_read(),
                total: rows.total_rows(),
            },
            Source::JsonLines(rows) => rows.input_progress(),
            Source::Csv(rows) => rows.input_progress(),
        }
    }

    /// Creates a progress bar sized and styled for this input and makes the
    /// reader advance it every few thousand rows and at the end.
    ///
    /// The bar draws to standard error, and indicatif hides it when standard
    /// error is not a terminal. The caller finishes or clears it.
    pub fn progress_bar(&mut self) -> ProgressBar {
        let progress = self.progress();
        let template = match progress.unit {
            ProgressUnit::Rows => "{wide_bar} {human_pos}/{human_len} rows ({per_sec:0}, {eta})",
            ProgressUnit::Bytes => "{wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        };
        let style = ProgressStyle::with_template(template)
            .expect("the progress bar templates are constant and valid");
        let bar = ProgressBar::new(progress.total).with_style(style);
        bar.set_position(progress.position);
        self.progress_bar = Some(bar.clone());
        bar
    }

    #[allow(
        clippy::manual_is_multiple_of,
        reason = "u64::is_multiple_of needs Rust 1.87 and the workspace supports 1.85"
    )]
    fn update_progress_bar(&self, force: bool) {
        if let Some(bar) = &self.progress_bar {
            if force || self.rows_returned % PROGRESS_BAR_STEP == 0 {
                bar.set_position(self.progress().position);
            }
        }
    }
}

impl Iterator for RowReader {
    type Item = Result<Row, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = match &mut self.source {
            Source::JsonLines(rows) => rows.next(),
            Source::Csv(rows) => rows.next(),
            Source::Parquet(rows) => rows.next(),
        };
        match &item {
            Some(Ok(_)) => {
                self.rows_returned += 1;
                self.update_progress_bar(false);
            }
            Some(Err(_)) => {}
            None => self.update_progress_bar(true),
        }
        item
    }
}

impl fmt::Debug for RowReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowReader")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("rows_returned", &self.rows_returned)
            .finish_non_exhaustive()
    }
}

fn open_file(path: &Path) -> Result<File, LoadError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(error) => return Err(read_error(path, error)),
    };
    if !metadata.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|error| read_error(path, error))
}

fn read_error(path: &Path, error: io::Error) -> LoadError {
    LoadError::Read {
        path: path.to_path_buf(),
        error,
    }
}

/// A file that counts the bytes read from it, so text formats can report
/// progress in bytes while a buffered parser sits on top.
struct CountingFile {
    file: File,
    bytes_read: Arc<AtomicU64>,
    size: u64,
}

impl CountingFile {
    fn new(path: &Path, file: File) -> Result<Self, LoadError> {
        let size = file
            .metadata()
            .map_err(|error| read_error(path, error))?
            .len();
        Ok(Self {
            file,
            bytes_read: Arc::new(AtomicU64::new(0)),
            size,
        })
    }

    /// Returns a handle that keeps reporting the count after the parser has
    /// taken ownership of the file.
    fn counter(&self) -> InputCounter {
        InputCounter {
            bytes_read: Arc::clone(&self.bytes_read),
            size: self.size,
        }
    }
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.file.read(buf)?;
        self.bytes_read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// Byte count of a [`CountingFile`], kept by the text parsers.
struct InputCounter {
    bytes_read: Arc<AtomicU64>,
    size: u64,
}

impl InputCounter {
    fn progress(&self) -> Progress {
        Progress {
            unit: ProgressUnit::Bytes,
            position: self.bytes_read.load(Ordering::Relaxed),
            total: self.size,
        }
    }
}

/// Appends `text` to `out` as a JSON string literal with quotes and escapes.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("serializing a str into a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        let mut file = File::create(&path).unwrap();
        file.write_all(contents).unwrap();
        path
    }

    #[test]
    fn format_from_extension() {
        let cases = [
            ("a.jsonl", InputFormat::JsonLines),
            ("a.ndjson", InputFormat::JsonLines),
            ("a.json", InputFormat::JsonLines),
            ("a.JSONL", InputFormat::JsonLines),
            ("a.csv", InputFormat::Csv),
            ("dir.d/a.parquet", InputFormat::Parquet),
        ];
        for (name, expected) in cases {
            assert_eq!(
                InputFormat::from_path(Path::new(name)).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn format_unknown_extension_lists_accepted() {
        let error = InputFormat::from_path(Path::new("data/input.txt")).unwrap_err();
        assert!(matches!(error, LoadError::UnknownExtension { .. }));
        assert_eq!(
            error.to_string(),
            "data/input.txt: unknown file extension \".txt\"; use one of .jsonl, .ndjson, .json, \
             .csv, .parquet or set the input format explicitly"
        );
    }

    #[test]
    fn format_missing_extension() {
        let error = InputFormat::from_path(Path::new("input")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "input: no file extension; use one of .jsonl, .ndjson, .json, .csv, .parquet or set \
             the input format explicitly"
        );
    }

    #[test]
    fn format_from_name() {
        assert_eq!(
            "jsonl".parse::<InputFormat>().unwrap(),
            InputFormat::JsonLines
        );
        assert_eq!("CSV".parse::<InputFormat>().unwrap(), InputFormat::Csv);
        assert_eq!(
            "parquet".parse::<InputFormat>().unwrap(),
            InputFormat::Parquet
        );
        for format in [
            InputFormat::JsonLines,
            InputFormat::Csv,
            InputFormat::Parquet,
        ] {
            assert_eq!(format.name().parse::<InputFormat>().unwrap(), format);
        }
        let error = "xml".parse::<InputFormat>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown input format \"xml\"; use one of jsonl, csv, parquet"
        );
    }

    #[test]
    fn override_reads_other_extension() {
        // A CSV file with a .txt name is read as CSV when the format is given.
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "rows.txt", b"id,n\na,1\n");
        let rows: Vec<Row> = read_rows(&path, InputFormat::Csv, "id")
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, br#"{"id":"a","n":1}"#);
    }

    #[test]
    fn read_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.jsonl");
        let error = read_rows(&path, InputFormat::JsonLines, "id").unwrap_err();
        assert!(matches!(error, LoadError::NotFound { .. }));
        assert_eq!(
            error.to_string(),
            format!("{}: file not found; check the path", path.display())
        );
    }

    #[test]
    fn read_directory_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for format in [
            InputFormat::JsonLines,
            InputFormat::Csv,
            InputFormat::Parquet,
        ] {
            let error = read_rows(dir.path(), format, "id").unwrap_err();
            assert!(
                matches!(error, LoadError::NotAFile { .. }),
                "{format}: {error}"
            );
        }
    }

    #[test]
    fn progress_in_bytes_for_text() {
        let dir = tempfile::tempdir().unwrap();
        let contents = b"{\"id\":1}\n{\"id\":2}\n";
        let path = write_file(&dir, "rows.jsonl", contents);
        let mut reader = read_rows(&path, InputFormat::JsonLines, "id").unwrap();
        assert_eq!(reader.total_rows(), None);
        assert_eq!(reader.progress().unit, ProgressUnit::Bytes);
        assert_eq!(reader.progress().total, contents.len() as u64);

        let bar = reader.progress_bar();
        assert_eq!(bar.length(), Some(contents.len() as u64));
        assert_eq!(reader.by_ref().count(), 2);
        assert_eq!(reader.progress().position, contents.len() as u64);
        assert_eq!(bar.position(), contents.len() as u64);
    }

    #[test]
    fn row_reader_is_send() {
        // The host reads input on a blocking thread, so the reader must move there.
        fn assert_send<T: Send>() {}
        assert_send::<RowReader>();
    }
}
