//! Reference figures for the flight-delays demo, computed straight from the
//! Parquet columns.
//!
//! The demo streams the flights file through Kafka, the agent and its tables.
//! [`flights_reference`] computes the same per-origin figures without any part
//! of that path, including the input loader, so agreement between the two
//! checks the pipeline end to end. It reads only the `origin` (string) and
//! `delay` (INT64, minutes) columns with the parquet crate's column readers,
//! one row group and one batch at a time, so memory stays flat for any file
//! size.
//!
//! On `flights-3m.parquet` (3,000,000 rows) it returns 229 origins and 14,411
//! rows with a delay of at least [`LONG_DELAY_MINUTES`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::SchemaDescriptor;

/// Delay in minutes from which a flight counts in [`Reference::long_delays`].
pub const LONG_DELAY_MINUTES: i64 = 180;

/// Rows decoded per column reader call.
const BATCH_ROWS: usize = 8192;

/// Figures for the flights that leave one origin airport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginStats {
    /// Number of rows with this origin.
    pub flights: u64,
    /// Sum of their delays in minutes. Early departures count as negative.
    pub delay_total: i64,
    /// Largest delay in minutes.
    pub delay_max: i64,
}

/// Expected demo results for a flights file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// Figures per origin airport code, in code order.
    pub origins: BTreeMap<String, OriginStats>,
    /// Number of rows whose delay is at least [`LONG_DELAY_MINUTES`].
    pub long_delays: u64,
    /// Number of rows read.
    pub rows: u64,
}

/// Error from computing the reference figures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(
    missing_docs,
    reason = "variant fields are the values that each message shows, named for what they contain"
)]
pub enum ReferenceError {
    /// The file could not be opened.
    #[error("failed to open {}: {error}", .path.display())]
    Open { path: PathBuf, error: io::Error },

    /// The Parquet footer or a data page could not be decoded.
    #[error("{}: failed to read Parquet data: {error}", .path.display())]
    Parquet { path: PathBuf, error: ParquetError },

    /// The schema has no top-level column of that name.
    #[error(
        "{}: column \"{column}\" is missing; a flights file needs an \"origin\" string column and \
         a \"delay\" INT64 column",
        .path.display()
    )]
    MissingColumn { path: PathBuf, column: &'static str },

    /// The column has another physical type than the reference reads.
    #[error("{}: column \"{column}\" has physical type {found}, expected {expected}", .path.display())]
    ColumnType {
        path: PathBuf,
        column: &'static str,
        found: PhysicalType,
        expected: PhysicalType,
    },

    /// A row has no value in a column that the figures need.
    #[error("{}: row {row}: column \"{column}\" is null; every row needs an origin and a delay", .path.display())]
    NullValue {
        path: PathBuf,
        column: &'static str,
        row: u64,
    },

    /// An origin is not valid UTF-8.
    #[error("{}: row {row}: origin is not valid UTF-8", .path.display())]
    InvalidOrigin { path: PathBuf, row: u64 },
}

/// Computes per-origin flight counts, delay totals and maxima, and the number
/// of long delays, from the `origin` and `delay` columns of `path`.
///
/// # Errors
///
/// Fails when the file cannot be opened or decoded, when either column is
/// missing or has another physical type, and on a null or non-UTF-8 value.
pub fn flights_reference(path: &Path) -> Result<Reference, ReferenceError> {
    let file = File::open(path).map_err(|error| ReferenceError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    let parquet_error = |error| ReferenceError::Parquet {
        path: path.to_path_buf(),
        error,
    };
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let origin_column = find_column(path, schema, "origin", PhysicalType::BYTE_ARRAY)?;
    let delay_column = find_column(path, schema, "delay", PhysicalType::INT64)?;
    let origin_max_level = schema.column(origin_column).max_def_level();
    let delay_max_level = schema.column(delay_column).max_def_level();

    let mut reference = Reference::default();
    let mut origins: Vec<ByteArray> = Vec::with_capacity(BATCH_ROWS);
    let mut delays: Vec<i64> = Vec::with_capacity(BATCH_ROWS);
    let mut origin_levels: Vec<i16> = Vec::with_capacity(BATCH_ROWS);
    let mut delay_levels: Vec<i16> = Vec::with_capacity(BATCH_ROWS);

    for row_group_index in 0..reader.num_row_groups() {
        let row_group = reader
            .get_row_group(row_group_index)
            .map_err(parquet_error)?;
        let mut origin_reader = get_typed_column_reader::<ByteArrayType>(
            row_group
                .get_column_reader(origin_column)
                .map_err(parquet_error)?,
        );
        let mut delay_reader = get_typed_column_reader::<Int64Type>(
            row_group
                .get_column_reader(delay_column)
                .map_err(parquet_error)?,
        );

        loop {
            // read_records appends, so each batch starts from empty buffers.
            origins.clear();
            delays.clear();
            origin_levels.clear();
            delay_levels.clear();
            let (origin_rows, _, _) = origin_reader
                .read_records(BATCH_ROWS, Some(&mut origin_levels), None, &mut origins)
                .map_err(parquet_error)?;
            let (delay_rows, _, _) = delay_reader
                .read_records(BATCH_ROWS, Some(&mut delay_levels), None, &mut delays)
                .map_err(parquet_error)?;
            if origin_rows != delay_rows {
                return Err(parquet_error(ParquetError::General(format!(
                    "row group {row_group_index} has {origin_rows} origin rows but {delay_rows} delay rows in one batch"
                ))));
            }
            if origin_rows == 0 {
                break;
            }

            let first_row = reference.rows + 1;
            check_no_nulls(path, "origin", &origin_levels, origin_max_level, first_row)?;
            check_no_nulls(path, "delay", &delay_levels, delay_max_level, first_row)?;

            for (offset, (origin, &delay)) in origins.iter().zip(&delays).enumerate() {
                let origin = std::str::from_utf8(origin.data()).map_err(|_| {
                    ReferenceError::InvalidOrigin {
                        path: path.to_path_buf(),
                        row: first_row + offset as u64,
                    }
                })?;
                add_flight(&mut reference, origin, delay);
            }
            reference.rows += origin_rows as u64;
        }
    }
    Ok(reference)
}

fn add_flight(reference: &mut Reference, origin: &str, delay: i64) {
    match reference.origins.get_mut(origin) {
        Some(stats) => {
            stats.flights += 1;
            stats.delay_total += delay;
            stats.delay_max = stats.delay_max.max(delay);
        }
        None => {
            let stats = OriginStats {
                flights: 1,
                delay_total: delay,
                delay_max: delay,
            };
            reference.origins.insert(origin.to_owned(), stats);
        }
    }
    if delay >= LONG_DELAY_MINUTES {
        reference.long_delays += 1;
    }
}

/// Returns the leaf index of the top-level column `name` after checking its
/// physical type.
fn find_column(
    path: &Path,
    schema: &SchemaDescriptor,
    name: &'static str,
    expected: PhysicalType,
) -> Result<usize, ReferenceError> {
    let Some(index) = schema
        .columns()
        .iter()
        .position(|column| column.max_rep_level() == 0 && column.path().parts() == [name])
    else {
        return Err(ReferenceError::MissingColumn {
            path: path.to_path_buf(),
            column: name,
        });
    };
    let found = schema.column(index).physical_type();
    if found != expected {
        return Err(ReferenceError::ColumnType {
            path: path.to_path_buf(),
            column: name,
            found,
            expected,
        });
    }
    Ok(index)
}

/// Fails on the first row of a batch whose definition level is below the
/// column's maximum, which marks a null. A required column has no levels.
fn check_no_nulls(
    path: &Path,
    column: &'static str,
    levels: &[i16],
    max_level: i16,
    first_row: u64,
) -> Result<(), ReferenceError> {
    match levels.iter().position(|&level| level < max_level) {
        None => Ok(()),
        Some(offset) => Err(ReferenceError::NullValue {
            path: path.to_path_buf(),
            column,
            row: first_row + offset as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    /// Writes an `origin`/`delay` file in one row group. `origins`
    /// contains `None` for a null origin.
    fn write_flights(
        path: &Path,
        origins: &[Option<&str>],
        delays: &[i64],
        properties: WriterProperties,
    ) {
        let schema = "message flights { optional binary origin (STRING); required int64 delay; }";
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let file = File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties)).unwrap();
        let mut row_group = writer.next_row_group().unwrap();

        let values: Vec<ByteArray> = origins
            .iter()
            .flatten()
            .map(|origin| ByteArray::from(*origin))
            .collect();
        let levels: Vec<i16> = origins
            .iter()
            .map(|origin| i16::from(origin.is_some()))
            .collect();
        let mut column = row_group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .unwrap();
        column.close().unwrap();

        let mut column = row_group.next_column().unwrap().unwrap();
        column
            .typed::<Int64Type>()
            .write_batch(delays, None, None)
            .unwrap();
        column.close().unwrap();

        row_group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn small_file_figures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flights.parquet");
        let origins = [Some("LAS"), Some("ATL"), Some("LAS"), Some("LAS")];
        write_flights(
            &path,
            &origins,
            &[-5, 180, 200, 179],
            WriterProperties::builder().build(),
        );

        let reference = flights_reference(&path).unwrap();
        assert_eq!(reference.rows, 4);
        assert_eq!(reference.long_delays, 2);
        assert_eq!(reference.origins.len(), 2);
        assert_eq!(
            reference.origins["LAS"],
            OriginStats {
                flights: 3,
                delay_total: 374,
                delay_max: 200
            }
        );
        assert_eq!(
            reference.origins["ATL"],
            OriginStats {
                flights: 1,
                delay_total: 180,
                delay_max: 180
            }
        );
    }

    #[test]
    fn negative_delays_keep_max() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("early.parquet");
        write_flights(
            &path,
            &[Some("SAV"), Some("SAV")],
            &[-12, -3],
            WriterProperties::builder().build(),
        );

        let reference = flights_reference(&path).unwrap();
        assert_eq!(reference.origins["SAV"].delay_max, -3);
        assert_eq!(reference.origins["SAV"].delay_total, -15);
        assert_eq!(reference.long_delays, 0);
    }

    #[test]
    fn batches_across_pages() {
        // Small pages and more rows than one batch exercise the batch loop.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.parquet");
        let rows = 3 * BATCH_ROWS + 17;
        let origins: Vec<Option<&str>> = (0..rows)
            .map(|row| Some(if row % 2 == 0 { "A" } else { "B" }))
            .collect();
        let delays: Vec<i64> = (0..rows as i64).collect();
        let properties = WriterProperties::builder()
            .set_data_page_row_count_limit(1000)
            .set_write_batch_size(1000)
            .build();
        write_flights(&path, &origins, &delays, properties);

        let reference = flights_reference(&path).unwrap();
        assert_eq!(reference.rows, rows as u64);
        assert_eq!(reference.origins["A"].flights, (rows as u64).div_ceil(2));
        assert_eq!(reference.origins["B"].delay_max, rows as i64 - 2);
        assert_eq!(reference.long_delays, rows as u64 - 180);
    }

    #[test]
    fn null_origin_reports_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nulls.parquet");
        write_flights(
            &path,
            &[Some("LAS"), None, Some("ATL")],
            &[1, 2, 3],
            WriterProperties::builder().build(),
        );

        let error = flights_reference(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: row 2: column \"origin\" is null; every row needs an origin and a delay",
                path.display()
            )
        );
    }

    #[test]
    fn missing_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        let schema = Arc::new(parse_message_type("message m { required int64 delay; }").unwrap());
        let file = File::create(&path).unwrap();
        let writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
                .unwrap();
        writer.close().unwrap();

        let error = flights_reference(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: column \"origin\" is missing; a flights file needs an \"origin\" string column \
                 and a \"delay\" INT64 column",
                path.display()
            )
        );
    }

    #[test]
    fn wrong_column_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.parquet");
        let schema = "message m { required binary origin (STRING); required double delay; }";
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let file = File::create(&path).unwrap();
        let writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
                .unwrap();
        writer.close().unwrap();

        let error = flights_reference(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: column \"delay\" has physical type DOUBLE, expected INT64",
                path.display()
            )
        );
    }

    #[test]
    fn missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = flights_reference(&dir.path().join("absent.parquet")).unwrap_err();
        assert!(matches!(error, ReferenceError::Open { .. }), "{error}");
    }

    #[test]
    fn flights_file_figures() {
        let Some(home) = std::env::var_os("HOME") else {
            println!("skipped: HOME is not set, so the flights file cannot be found");
            return;
        };
        let path = PathBuf::from(home).join(".cache/tablehost/data/flights-3m.parquet");
        if !path.exists() {
            println!("skipped: {} is absent", path.display());
            return;
        }

        let reference = flights_reference(&path).unwrap();
        assert_eq!(reference.rows, 3_000_000);
        assert_eq!(reference.origins.len(), 229);
        assert_eq!(reference.long_delays, 14_411);
        let flights: u64 = reference.origins.values().map(|stats| stats.flights).sum();
        assert_eq!(flights, 3_000_000);
        let delay_total: i64 = reference
            .origins
            .values()
            .map(|stats| stats.delay_total)
            .sum();
        assert_eq!(delay_total, 20_003_603);
        // Figures for one origin, cross-checked with pyarrow 26 group_by.
        assert_eq!(
            reference.origins["LAS"],
            OriginStats {
                flights: 67_192,
                delay_total: 542_449,
                delay_max: 1_147
            }
        );
    }
}
