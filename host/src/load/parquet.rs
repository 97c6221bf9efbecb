//! Parquet input: every row becomes a JSON object with one member per
//! top-level column, in schema order.
//!
//! A flat schema, where every top-level column is a primitive, is decoded
//! with one column reader per column, a batch of rows at a time. A schema
//! with groups, lists or maps goes through the parquet crate's record API
//! ([`RowIter`]). Both read one row group's pages at a time, and both map
//! values to JSON like this:
//!
//! - null, booleans, integers (signed and unsigned) and finite floats map to
//!   JSON null, booleans and numbers. A NaN or infinite float becomes `null`.
//! - Strings, enums and JSON columns become strings.
//! - Timestamps become `"YYYY-MM-DD HH:MM:SS"` strings in the stored time zone
//!   (UTC when the column is adjusted to UTC), followed by `.fff`, `.ffffff` or
//!   `.fffffffff` for millisecond, microsecond or nanosecond columns when the
//!   fraction is not zero. INT96 timestamps are read as milliseconds.
//! - Dates become `"YYYY-MM-DD"`, times of day `"HH:MM:SS"` with the same
//!   fraction rule.
//! - Decimals become JSON numbers with exactly `scale` digits after the point.
//! - Binary values become a string when they are valid UTF-8 and a standard
//!   base64 string (with padding) otherwise.
//! - Groups become objects, lists arrays and maps objects whose member names
//!   are the key's string or JSON text.
//!
//! NOTE: nanosecond timestamps and times are recognised only in top-level
//! columns. Inside a group, list or map the record API reports them as plain
//! integers, so they stay JSON numbers.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ::parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DataType, DoubleType, FixedLenByteArray,
    FixedLenByteArrayType, FloatType, Int32Type, Int64Type, Int96, Int96Type,
};
use ::parquet::errors::ParquetError;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::reader::RowIter;
use ::parquet::record::{Field, Row as ParquetRow};
use ::parquet::schema::types::{ColumnDescPtr, ColumnDescriptor};

use super::{push_json_string, InputFormat, LoadError, Location, Row};

const MILLIS_PER_SECOND: i64 = 1_000;
const MICROS_PER_SECOND: i64 = 1_000_000;
const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Rows decoded per column reader call on the flat-schema path.
const BATCH_ROWS: usize = 4096;

/// Rows of a Parquet file.
pub(super) struct ParquetRows {
    path: PathBuf,
    key_field: String,
    key_index: usize,
    total_rows: u64,
    /// Bytes written before each top-level value: `{"name":` for the first
    /// column and `,"name":` for the others.
    member_prefixes: Vec<Vec<u8>>,
    decoder: Decoder,
    /// Length of the last value, used to size the next value's buffer.
    last_value_len: usize,
    /// Number of the last row read, starting at 1.
    row_number: u64,
    /// Set after a decode error or the last row.
    finished: bool,
}

enum Decoder {
    /// Flat schemas, through column readers.
    Columns(FlatColumns),
    /// Schemas with groups, lists or maps, through the record API, with the
    /// rendering of each top-level column.
    Records(RowIter<'static>, Vec<ValueKind>),
}

/// Outcome of decoding one row into a JSON buffer.
enum Decoded {
    End,
    /// A row was written. `key` is the byte range of the key field's JSON
    /// text, or `None` when the key field is null.
    Row {
        key: Option<Range<usize>>,
    },
}

/// Rendering of a top-level column's values beyond what [`Field`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Plain,
    /// INT64 nanoseconds since the epoch, which the record API leaves as an
    /// integer.
    TimestampNanos,
    /// INT64 nanoseconds since midnight, which the record API leaves as an
    /// integer.
    TimeNanos,
    /// A byte array annotated as a string, enum or JSON, written without an
    /// intermediate `String`.
    Utf8,
}

impl ParquetRows {
    /// Reads the footer, checks the schema and prepares the decoder.
    pub(super) fn open(path: &Path, file: File, key_field: &str) -> Result<Self, LoadError> {
        Self::open_with(path, file, key_field, false)
    }

    /// Opens like [`ParquetRows::open`], using the record API even for a flat
    /// schema when `force_records` is set, so tests can compare both paths.
    fn open_with(
        path: &Path,
        file: File,
        key_field: &str,
        force_records: bool,
    ) -> Result<Self, LoadError> {
        let reader = SerializedFileReader::new(file).map_err(|error| LoadError::ParquetOpen {
            path: path.to_path_buf(),
            error,
        })?;
        let file_metadata = reader.metadata().file_metadata();
        let schema = file_metadata.schema_descr_ptr();

        let total_rows = u64::try_from(file_metadata.num_rows()).unwrap_or(0);
        if total_rows == 0 {
            return Err(LoadError::Empty {
                path: path.to_path_buf(),
                format: InputFormat::Parquet,
            });
        }

        // The record API panics on a few legal but rare converted types, so
        // such columns are rejected here with an error instead.
        if let Some(column) = schema
            .columns()
            .iter()
            .find(|column| !is_convertible(column))
        {
            return Err(LoadError::UnsupportedColumn {
                path: path.to_path_buf(),
                column: column.path().string(),
                column_type: format!("{} ({})", column.physical_type(), column.converted_type()),
            });
        }

        let fields = schema.root_schema().get_fields();
        let names: Vec<String> = fields.iter().map(|field| field.name().to_owned()).collect();
        let Some(key_index) = names.iter().position(|name| name == key_field) else {
            return Err(LoadError::KeyFieldMissing {
                path: path.to_path_buf(),
                location: Location::Schema,
                field: key_field.to_owned(),
                present: names,
            });
        };
        let member_prefixes = names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut prefix = vec![if index == 0 { b'{' } else { b',' }];
                push_json_string(&mut prefix, name);
                prefix.push(b':');
                prefix
            })
            .collect();

        // In a flat schema the leaf columns are the top-level fields, in order.
        let is_flat =
            fields.iter().all(|field| field.is_primitive()) && schema.num_columns() == fields.len();
        let decoder = if is_flat && !force_records {
            Decoder::Columns(FlatColumns::new(reader, schema.columns()))
        } else {
            let kinds = fields
                .iter()
                .map(|field| {
                    if !field.is_primitive() || field.get_physical_type() != PhysicalType::INT64 {
                        return ValueKind::Plain;
                    }
                    integer_kind(field.get_basic_info().logical_type_ref())
                })
                .collect();
            Decoder::Records(RowIter::from_file_into(Box::new(reader)), kinds)
        };

        Ok(Self {
            path: path.to_path_buf(),
            key_field: key_field.to_owned(),
            key_index,
            total_rows,
            member_prefixes,
            decoder,
            last_value_len: 0,
            row_number: 0,
            finished: false,
        })
    }

    pub(super) fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// Returns the number of rows read so far, including rows returned as
    /// errors.
    pub(super) fn rows_read(&self) -> u64 {
        self.row_number
    }
}

impl Iterator for ParquetRows {
    type Item = Result<Row, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }

        let mut value = Vec::with_capacity(self.last_value_len + 16);
        let decoded = match &mut self.decoder {
            Decoder::Columns(columns) => {
                columns.push_row(&mut value, &self.member_prefixes, self.key_index)
            }
            Decoder::Records(rows, kinds) => match rows.next() {
                None => Ok(Decoded::End),
                Some(Err(error)) => Err(error),
                Some(Ok(row)) => Ok(push_record(
                    &mut value,
                    &row,
                    &self.member_prefixes,
                    kinds,
                    self.key_index,
                )),
            },
        };

        let key = match decoded {
            Ok(Decoded::End) => {
                self.finished = true;
                return None;
            }
            Ok(Decoded::Row { key }) => {
                self.row_number += 1;
                key
            }
            Err(error) => {
                self.row_number += 1;
                self.finished = true;
                return Some(Err(LoadError::ParquetRead {
                    path: self.path.clone(),
                    row: self.row_number,
                    error,
                }));
            }
        };

        self.last_value_len = value.len();
        let Some(key) = key else {
            return Some(Err(LoadError::KeyFieldNull {
                path: self.path.clone(),
                location: Location::Row(self.row_number),
                field: self.key_field.clone(),
            }));
        };
        let key = json_text_to_key(&value[key]);
        Some(Ok(Row { key, value }))
    }
}

/// Writes one record API row as a JSON object.
fn push_record(
    out: &mut Vec<u8>,
    row: &ParquetRow,
    member_prefixes: &[Vec<u8>],
    kinds: &[ValueKind],
    key_index: usize,
) -> Decoded {
    let mut key = None;
    let columns = member_prefixes.iter().zip(kinds);
    for (index, ((prefix, kind), (_, field))) in columns.zip(row.get_column_iter()).enumerate() {
        out.extend_from_slice(prefix);
        let start = out.len();
        match (field, kind) {
            (Field::Long(nanos), ValueKind::TimestampNanos) => {
                push_timestamp(out, *nanos, NANOS_PER_SECOND, 9)
            }
            (Field::Long(nanos), ValueKind::TimeNanos) => {
                push_time_of_day(out, *nanos, NANOS_PER_SECOND, 9)
            }
            _ => push_field(out, field),
        }
        if index == key_index && *field != Field::Null {
            key = Some(start..out.len());
        }
    }
    out.push(b'}');
    Decoded::Row { key }
}

/// Column readers for a flat schema, reading the same batch of rows from
/// every column of the current row group.
struct FlatColumns {
    reader: SerializedFileReader<File>,
    columns: Vec<FlatColumn>,
    next_row_group: usize,
    /// Rows in the current batch, and the next of them to write.
    batch_rows: usize,
    batch_position: usize,
}

struct FlatColumn {
    descr: ColumnDescPtr,
    kind: ValueKind,
    /// Definition levels of the batch, left empty for a required column.
    levels: Vec<i16>,
    /// Index in `values` of the next non-null value.
    next_value: usize,
    /// Reader and decoded values, or `None` before the first row group.
    values: Option<TypedValues>,
}

/// Column reader of one physical type with its batch of decoded values.
enum TypedValues {
    Bool(ColumnReaderImpl<BoolType>, Vec<bool>),
    Int32(ColumnReaderImpl<Int32Type>, Vec<i32>),
    Int64(ColumnReaderImpl<Int64Type>, Vec<i64>),
    Int96(ColumnReaderImpl<Int96Type>, Vec<Int96>),
    Float(ColumnReaderImpl<FloatType>, Vec<f32>),
    Double(ColumnReaderImpl<DoubleType>, Vec<f64>),
    ByteArray(ColumnReaderImpl<ByteArrayType>, Vec<ByteArray>),
    FixedLenByteArray(
        ColumnReaderImpl<FixedLenByteArrayType>,
        Vec<FixedLenByteArray>,
    ),
}

impl FlatColumns {
    fn new(reader: SerializedFileReader<File>, descriptors: &[ColumnDescPtr]) -> Self {
        let columns = descriptors
            .iter()
            .map(|descr| {
                let kind = match descr.physical_type() {
                    PhysicalType::INT64 => integer_kind(descr.logical_type_ref()),
                    PhysicalType::BYTE_ARRAY
                        if matches!(
                            descr.converted_type(),
                            ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON
                        ) =>
                    {
                        ValueKind::Utf8
                    }
                    _ => ValueKind::Plain,
                };
                FlatColumn {
                    descr: descr.clone(),
                    kind,
                    levels: Vec::with_capacity(BATCH_ROWS),
                    next_value: 0,
                    values: None,
                }
            })
            .collect();
        Self {
            reader,
            columns,
            next_row_group: 0,
            batch_rows: 0,
            batch_position: 0,
        }
    }

    /// Writes the next row as a JSON object.
    fn push_row(
        &mut self,
        out: &mut Vec<u8>,
        member_prefixes: &[Vec<u8>],
        key_index: usize,
    ) -> Result<Decoded, ParquetError> {
        if !self.fill_batch()? {
            return Ok(Decoded::End);
        }
        let row = self.batch_position;
        self.batch_position += 1;

        let mut key = None;
        for (index, (column, prefix)) in self.columns.iter_mut().zip(member_prefixes).enumerate() {
            out.extend_from_slice(prefix);
            let start = out.len();
            let max_level = column.descr.max_def_level();
            if max_level > 0 && column.levels[row] < max_level {
                out.extend_from_slice(b"null");
                continue;
            }
            column.push_next_value(out)?;
            if index == key_index {
                key = Some(start..out.len());
            }
        }
        out.push(b'}');
        Ok(Decoded::Row { key })
    }

    /// Makes sure the current batch has a row left, reading the next batch
    /// or row group as needed. Returns false after the last row.
    fn fill_batch(&mut self) -> Result<bool, ParquetError> {
        while self.batch_position >= self.batch_rows {
            let rows = self.read_batch()?;
            if rows > 0 {
                self.batch_rows = rows;
                self.batch_position = 0;
                continue;
            }
            if self.next_row_group >= self.reader.num_row_groups() {
                return Ok(false);
            }
            let row_group = self.reader.get_row_group(self.next_row_group)?;
            for (index, column) in self.columns.iter_mut().enumerate() {
                column.values = Some(TypedValues::new(row_group.get_column_reader(index)?));
            }
            self.next_row_group += 1;
        }
        Ok(true)
    }

    /// Reads up to [`BATCH_ROWS`] rows from every column and returns how
    /// many, 0 at the end of the row group or before the first one.
    fn read_batch(&mut self) -> Result<usize, ParquetError> {
        let mut batch_rows = None;
        for column in &mut self.columns {
            let Some(values) = column.values.as_mut() else {
                return Ok(0);
            };
            column.levels.clear();
            column.next_value = 0;
            let levels = (column.descr.max_def_level() > 0).then_some(&mut column.levels);
            let rows = values.read_batch(levels)?;
            if *batch_rows.get_or_insert(rows) != rows {
                return Err(ParquetError::General(format!(
                    "column \"{}\" returned {rows} rows where the other columns returned {}",
                    column.descr.name(),
                    batch_rows.unwrap_or(0)
                )));
            }
        }
        Ok(batch_rows.unwrap_or(0))
    }
}

impl FlatColumn {
    /// Writes the next non-null value of the batch.
    fn push_next_value(&mut self, out: &mut Vec<u8>) -> Result<(), ParquetError> {
        let index = self.next_value;
        self.next_value += 1;
        let descr = &self.descr;
        let Some(values) = &self.values else {
            return Err(ParquetError::General("no row group is open".to_owned()));
        };
        match values {
            TypedValues::Bool(_, values) => push_field(out, &Field::Bool(values[index])),
            TypedValues::Int32(_, values) => {
                push_field(out, &Field::convert_int32(descr, values[index]))
            }
            TypedValues::Int64(_, values) => match self.kind {
                ValueKind::TimestampNanos => {
                    push_timestamp(out, values[index], NANOS_PER_SECOND, 9)
                }
                ValueKind::TimeNanos => push_time_of_day(out, values[index], NANOS_PER_SECOND, 9),
                _ => push_field(out, &Field::convert_int64(descr, values[index])),
            },
            TypedValues::Int96(_, values) => {
                push_field(out, &Field::convert_int96(descr, values[index]))
            }
            TypedValues::Float(_, values) => push_float(out, f64::from(values[index])),
            TypedValues::Double(_, values) => push_float(out, values[index]),
            TypedValues::ByteArray(_, values) if self.kind == ValueKind::Utf8 => {
                let text = std::str::from_utf8(values[index].data()).map_err(|error| {
                    ParquetError::General(format!(
                        "column \"{}\" has a string that is not valid UTF-8: {error}",
                        descr.name()
                    ))
                })?;
                push_json_string(out, text);
            }
            TypedValues::ByteArray(_, values) => {
                push_field(
                    out,
                    &Field::convert_byte_array(descr, values[index].clone())?,
                );
            }
            TypedValues::FixedLenByteArray(_, values) => {
                push_field(
                    out,
                    &Field::convert_byte_array(descr, values[index].clone().into())?,
                );
            }
        }
        Ok(())
    }
}

impl TypedValues {
    fn new(reader: ColumnReader) -> Self {
        match reader {
            ColumnReader::BoolColumnReader(reader) => Self::Bool(reader, Vec::new()),
            ColumnReader::Int32ColumnReader(reader) => Self::Int32(reader, Vec::new()),
            ColumnReader::Int64ColumnReader(reader) => Self::Int64(reader, Vec::new()),
            ColumnReader::Int96ColumnReader(reader) => Self::Int96(reader, Vec::new()),
            ColumnReader::FloatColumnReader(reader) => Self::Float(reader, Vec::new()),
            ColumnReader::DoubleColumnReader(reader) => Self::Double(reader, Vec::new()),
            ColumnReader::ByteArrayColumnReader(reader) => Self::ByteArray(reader, Vec::new()),
            ColumnReader::FixedLenByteArrayColumnReader(reader) => {
                Self::FixedLenByteArray(reader, Vec::new())
            }
        }
    }

    fn read_batch(&mut self, levels: Option<&mut Vec<i16>>) -> Result<usize, ParquetError> {
        match self {
            Self::Bool(reader, values) => read_records(reader, values, levels),
            Self::Int32(reader, values) => read_records(reader, values, levels),
            Self::Int64(reader, values) => read_records(reader, values, levels),
            Self::Int96(reader, values) => read_records(reader, values, levels),
            Self::Float(reader, values) => read_records(reader, values, levels),
            Self::Double(reader, values) => read_records(reader, values, levels),
            Self::ByteArray(reader, values) => read_records(reader, values, levels),
            Self::FixedLenByteArray(reader, values) => read_records(reader, values, levels),
        }
    }
}

/// Replaces `values` (and `levels`, when given) with the next batch of rows
/// and returns the number of rows read.
fn read_records<T: DataType>(
    reader: &mut ColumnReaderImpl<T>,
    values: &mut Vec<T::T>,
    levels: Option<&mut Vec<i16>>,
) -> Result<usize, ParquetError> {
    // read_records appends, so the buffers start empty.
    values.clear();
    let (rows, _, _) = reader.read_records(BATCH_ROWS, levels, None, values)?;
    Ok(rows)
}

/// Returns the rendering of an INT64 column with this logical type.
fn integer_kind(logical_type: Option<&LogicalType>) -> ValueKind {
    match logical_type {
        Some(LogicalType::Timestamp {
            unit: TimeUnit::NANOS,
            ..
        }) => ValueKind::TimestampNanos,
        Some(LogicalType::Time {
            unit: TimeUnit::NANOS,
            ..
        }) => ValueKind::TimeNanos,
        _ => ValueKind::Plain,
    }
}

/// Returns whether the record API can convert the column without panicking,
/// following the conversions in `parquet::record::Field`.
fn is_convertible(column: &ColumnDescriptor) -> bool {
    use ConvertedType as C;
    let converted = column.converted_type();
    match column.physical_type() {
        PhysicalType::BOOLEAN
        | PhysicalType::INT96
        | PhysicalType::FLOAT
        | PhysicalType::DOUBLE => true,
        PhysicalType::INT32 => matches!(
            converted,
            C::NONE
                | C::INT_8
                | C::INT_16
                | C::INT_32
                | C::UINT_8
                | C::UINT_16
                | C::UINT_32
                | C::DATE
                | C::TIME_MILLIS
                | C::DECIMAL
        ),
        PhysicalType::INT64 => matches!(
            converted,
            C::NONE
                | C::INT_64
                | C::UINT_64
                | C::TIME_MICROS
                | C::TIMESTAMP_MILLIS
                | C::TIMESTAMP_MICROS
                | C::DECIMAL
        ),
        PhysicalType::BYTE_ARRAY => matches!(
            converted,
            C::NONE | C::UTF8 | C::ENUM | C::JSON | C::BSON | C::DECIMAL
        ),
        PhysicalType::FIXED_LEN_BYTE_ARRAY => matches!(converted, C::NONE | C::DECIMAL),
    }
}

/// Turns the JSON text of a key value into key bytes: the contents of a JSON
/// string, or the text itself for any other value.
fn json_text_to_key(json: &[u8]) -> Vec<u8> {
    let Some(inner) = json
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
    else {
        return json.to_vec();
    };
    if !inner.contains(&b'\\') {
        return inner.to_vec();
    }
    match serde_json::from_slice::<String>(json) {
        Ok(text) => text.into_bytes(),
        Err(_) => json.to_vec(),
    }
}

/// Appends the JSON form of `field`, as listed in the module documentation.
fn push_field(out: &mut Vec<u8>, field: &Field) {
    match field {
        Field::Null => out.extend_from_slice(b"null"),
        Field::Bool(value) => out.extend_from_slice(if *value { b"true" } else { b"false" }),
        Field::Byte(value) => push_number(out, (*value).into()),
        Field::Short(value) => push_number(out, (*value).into()),
        Field::Int(value) => push_number(out, (*value).into()),
        Field::Long(value) => push_number(out, (*value).into()),
        Field::UByte(value) => push_number(out, (*value).into()),
        Field::UShort(value) => push_number(out, (*value).into()),
        Field::UInt(value) => push_number(out, (*value).into()),
        Field::ULong(value) => push_number(out, (*value).into()),
        Field::Float16(value) => push_float(out, f64::from(*value)),
        Field::Float(value) => push_float(out, f64::from(*value)),
        Field::Double(value) => push_float(out, *value),
        Field::Decimal(decimal) => push_decimal(out, decimal.data(), decimal.scale()),
        Field::Str(text) => push_json_string(out, text),
        Field::Bytes(bytes) => match std::str::from_utf8(bytes.data()) {
            Ok(text) => push_json_string(out, text),
            Err(_) => {
                out.push(b'"');
                push_base64(out, bytes.data());
                out.push(b'"');
            }
        },
        Field::Date(days) => {
            out.push(b'"');
            push_date_digits(out, i64::from(*days));
            out.push(b'"');
        }
        Field::TimeMillis(millis) => {
            push_time_of_day(out, i64::from(*millis), MILLIS_PER_SECOND, 3)
        }
        Field::TimeMicros(micros) => push_time_of_day(out, *micros, MICROS_PER_SECOND, 6),
        Field::TimestampMillis(millis) => push_timestamp(out, *millis, MILLIS_PER_SECOND, 3),
        Field::TimestampMicros(micros) => push_timestamp(out, *micros, MICROS_PER_SECOND, 6),
        Field::Group(row) => {
            out.push(b'{');
            for (index, (name, value)) in row.get_column_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                push_json_string(out, name);
                out.push(b':');
                push_field(out, value);
            }
            out.push(b'}');
        }
        Field::ListInternal(list) => {
            out.push(b'[');
            for (index, element) in list.elements().iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                push_field(out, element);
            }
            out.push(b']');
        }
        Field::MapInternal(map) => {
            out.push(b'{');
            for (index, (key, value)) in map.entries().iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let mut key_json = Vec::new();
                push_field(&mut key_json, key);
                if key_json.first() == Some(&b'"') {
                    out.extend_from_slice(&key_json);
                } else {
                    let key_text = String::from_utf8(key_json).expect("JSON text is UTF-8");
                    push_json_string(out, &key_text);
                }
                out.push(b':');
                push_field(out, value);
            }
            out.push(b'}');
        }
    }
}

fn push_number(out: &mut Vec<u8>, number: serde_json::Number) {
    serde_json::to_writer(&mut *out, &number).expect("serializing a number into a Vec cannot fail");
}

/// Appends a float, or `null` for NaN and infinities, which JSON cannot
/// represent.
fn push_float(out: &mut Vec<u8>, value: f64) {
    match serde_json::Number::from_f64(value) {
        Some(number) => push_number(out, number),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `"YYYY-MM-DD HH:MM:SS"` for `value` units since the Unix epoch,
/// with a fraction of `digits` digits when it is not zero.
fn push_timestamp(out: &mut Vec<u8>, value: i64, units_per_second: i64, digits: usize) {
    let seconds = value.div_euclid(units_per_second);
    let fraction = value.rem_euclid(units_per_second);

    out.push(b'"');
    push_date_digits(out, seconds.div_euclid(SECONDS_PER_DAY));
    out.push(b' ');
    push_clock_digits(out, seconds.rem_euclid(SECONDS_PER_DAY), fraction, digits);
    out.push(b'"');
}

/// Appends `"HH:MM:SS"` for `value` units since midnight, with a fraction of
/// `digits` digits when it is not zero.
fn push_time_of_day(out: &mut Vec<u8>, value: i64, units_per_second: i64, digits: usize) {
    out.push(b'"');
    push_clock_digits(
        out,
        value.div_euclid(units_per_second),
        value.rem_euclid(units_per_second),
        digits,
    );
    out.push(b'"');
}

/// Appends `YYYY-MM-DD` for days since 1970-01-01.
fn push_date_digits(out: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push(b'-');
    }
    push_padded(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
}

/// Appends `HH:MM:SS`, then `.` and `fraction` padded to `digits` digits when
/// the fraction is not zero. Hours are not wrapped at 24.
fn push_clock_digits(out: &mut Vec<u8>, seconds: i64, fraction: i64, digits: usize) {
    let seconds = seconds.unsigned_abs();
    push_padded(out, seconds / 3600, 2);
    out.push(b':');
    push_padded(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_padded(out, seconds % 60, 2);
    if fraction != 0 {
        out.push(b'.');
        push_padded(out, fraction.unsigned_abs(), digits);
    }
}

/// Appends `value` in decimal with leading zeros up to `width` digits.
fn push_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut buffer = [b'0'; 20];
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let start = start.min(buffer.len().saturating_sub(width));
    out.extend_from_slice(&buffer[start..]);
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month,
/// day), following Howard Hinnant's `civil_from_days` algorithm
/// (<https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Appends a decimal as a JSON number, from its unscaled value in big-endian
/// two's complement bytes and its scale (digits after the point).
fn push_decimal(out: &mut Vec<u8>, unscaled: &[u8], scale: i32) {
    let negative = unscaled.first().is_some_and(|byte| byte & 0x80 != 0);
    let mut magnitude = unscaled.to_vec();
    if negative {
        // Two's complement negation: invert every bit, then add one.
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
    }

    // Repeated division by ten yields the decimal digits, lowest first.
    let mut digits = Vec::new();
    while magnitude.iter().any(|&byte| byte != 0) {
        let mut remainder = 0u32;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u32::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    let scale = usize::try_from(scale).unwrap_or(0);
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();

    if negative {
        out.push(b'-');
    }
    let point = digits.len() - scale;
    out.extend_from_slice(&digits[..point]);
    if scale > 0 {
        out.push(b'.');
        out.extend_from_slice(&digits[point..]);
    }
}

/// Appends standard base64 with `=` padding (RFC 4648, section 4).
fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let group = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(group >> (18 - 6 * index) & 0x3F) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read_rows, InputFormat, LoadError, Location, ProgressUnit, Row};
    use super::{
        civil_from_days, push_base64, push_decimal, push_timestamp, ParquetRows, MICROS_PER_SECOND,
    };
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use ::parquet::data_type::{
        BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
        Int32Type, Int64Type,
    };
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    /// Values of one column for [`write_parquet`], with a definition level of
    /// 0 (null) or 1 (present) per row, or the levels of a nested column.
    enum Column {
        Int32(Vec<i32>, Vec<i16>),
        Int64(Vec<i64>, Vec<i16>),
        Bool(Vec<bool>, Vec<i16>),
        Double(Vec<f64>, Vec<i16>),
        Bytes(Vec<&'static [u8]>, Vec<i16>),
        OwnedBytes(Vec<Vec<u8>>, Vec<i16>),
        Fixed(Vec<Vec<u8>>, Vec<i16>),
        /// Values, definition levels and repetition levels of a list element.
        RepeatedBytes(Vec<&'static [u8]>, Vec<i16>, Vec<i16>),
    }

    /// Writes one row group, or none when `columns` is empty.
    fn write_parquet(path: &Path, schema: &str, columns: Vec<Column>) {
        let row_groups = if columns.is_empty() {
            Vec::new()
        } else {
            vec![columns]
        };
        write_row_groups(
            path,
            schema,
            WriterProperties::builder().build(),
            row_groups,
        );
    }

    fn write_row_groups(
        path: &Path,
        schema: &str,
        properties: WriterProperties,
        row_groups: Vec<Vec<Column>>,
    ) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties)).unwrap();
        for columns in row_groups {
            let mut row_group = writer.next_row_group().unwrap();
            for column in columns {
                let mut writer = row_group.next_column().unwrap().unwrap();
                match column {
                    Column::Int32(values, levels) => {
                        writer
                            .typed::<Int32Type>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::Int64(values, levels) => {
                        writer
                            .typed::<Int64Type>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::Bool(values, levels) => {
                        writer
                            .typed::<BoolType>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::Double(values, levels) => {
                        writer
                            .typed::<DoubleType>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::Bytes(values, levels) => {
                        let values: Vec<ByteArray> =
                            values.into_iter().map(ByteArray::from).collect();
                        writer
                            .typed::<ByteArrayType>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::OwnedBytes(values, levels) => {
                        let values: Vec<ByteArray> =
                            values.into_iter().map(ByteArray::from).collect();
                        writer
                            .typed::<ByteArrayType>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::Fixed(values, levels) => {
                        let values: Vec<FixedLenByteArray> = values
                            .into_iter()
                            .map(|bytes| FixedLenByteArray::from(ByteArray::from(bytes)))
                            .collect();
                        writer
                            .typed::<FixedLenByteArrayType>()
                            .write_batch(&values, Some(&levels), None)
                            .unwrap();
                    }
                    Column::RepeatedBytes(values, definition, repetition) => {
                        let values: Vec<ByteArray> =
                            values.into_iter().map(ByteArray::from).collect();
                        writer
                            .typed::<ByteArrayType>()
                            .write_batch(&values, Some(&definition), Some(&repetition))
                            .unwrap();
                    }
                }
                writer.close().unwrap();
            }
            row_group.close().unwrap();
        }
        writer.close().unwrap();
    }

    /// Returns the values that the column-reader path and the record API path
    /// produce for `path`, up to `limit` rows each.
    fn values_by_both_paths(
        path: &Path,
        key_field: &str,
        limit: usize,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let read = |force_records| -> Vec<Vec<u8>> {
            let file = std::fs::File::open(path).unwrap();
            ParquetRows::open_with(path, file, key_field, force_records)
                .unwrap()
                .take(limit)
                .map(|row| row.unwrap().value)
                .collect()
        };
        (read(false), read(true))
    }

    fn read_all(path: &Path, key_field: &str) -> Vec<Result<Row, LoadError>> {
        read_rows(path, InputFormat::Parquet, key_field)
            .unwrap()
            .collect()
    }

    fn value_text(row: &Result<Row, LoadError>) -> String {
        String::from_utf8(row.as_ref().unwrap().value.clone()).unwrap()
    }

    /// Returns the path of the 3-million-row flights file, or `None` with a
    /// printed note when it is absent, so the caller can skip its test.
    fn flights_path() -> Option<PathBuf> {
        let Some(home) = std::env::var_os("HOME") else {
            println!("skipped: HOME is not set, so the flights file cannot be found");
            return None;
        };
        let path = PathBuf::from(home).join(".cache/tablehost/data/flights-3m.parquet");
        if !path.exists() {
            println!("skipped: {} is absent", path.display());
            return None;
        }
        Some(path)
    }

    #[test]
    fn flights_first_row() {
        let Some(path) = flights_path() else {
            return;
        };

        let mut reader = read_rows(&path, InputFormat::Parquet, "origin").unwrap();
        assert_eq!(reader.total_rows(), Some(3_000_000));
        let first = reader.next().unwrap().unwrap();
        assert_eq!(first.key, b"LAS");
        assert_eq!(
            String::from_utf8(first.value).unwrap(),
            r#"{"date":"2001-01-01 00:01:00","delay":33,"distance":2176,"origin":"LAS","destination":"PHL"}"#
        );
        let progress = reader.progress();
        assert_eq!(progress.unit, ProgressUnit::Rows);
        assert_eq!(progress.position, 1);
        assert_eq!(progress.total, 3_000_000);
    }

    #[test]
    fn timestamps_in_each_unit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("times.parquet");
        let schema = "message m {
            required int32 id;
            optional int64 millis (TIMESTAMP(MILLIS,true));
            optional int64 micros (TIMESTAMP(MICROS,false));
            optional int64 nanos (TIMESTAMP(NANOS,false));
        }";
        // 2001-01-01 00:01:00 UTC is 978307260 seconds after the epoch.
        let seconds = 978_307_260_i64;
        write_parquet(
            &path,
            schema,
            vec![
                Column::Int32(vec![1, 2], vec![1, 1]),
                Column::Int64(vec![seconds * 1_000, seconds * 1_000 + 5], vec![1, 1]),
                Column::Int64(
                    vec![seconds * 1_000_000, seconds * 1_000_000 + 250_000],
                    vec![1, 1],
                ),
                Column::Int64(vec![seconds * 1_000_000_000 + 1], vec![1, 0]),
            ],
        );

        let rows = read_all(&path, "id");
        assert_eq!(
            value_text(&rows[0]),
            r#"{"id":1,"millis":"2001-01-01 00:01:00","micros":"2001-01-01 00:01:00","nanos":"2001-01-01 00:01:00.000000001"}"#
        );
        assert_eq!(
            value_text(&rows[1]),
            r#"{"id":2,"millis":"2001-01-01 00:01:00.005","micros":"2001-01-01 00:01:00.250000","nanos":null}"#
        );
    }

    #[test]
    fn other_types_map_to_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.parquet");
        let schema = "message m {
            required binary name (STRING);
            optional boolean flag;
            optional double ratio;
            optional int32 day (DATE);
            optional int32 price (DECIMAL(9,2));
            optional fixed_len_byte_array(16) big (DECIMAL(38,3));
            optional binary raw;
            optional int32 at (TIME(MILLIS,true));
        }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Bytes(vec![b"caf\xC3\xA9 \"x\"", b"b"], vec![1, 1]),
                Column::Bool(vec![true], vec![1, 0]),
                Column::Double(vec![0.25, f64::NAN], vec![1, 1]),
                Column::Int32(vec![11_323], vec![1, 0]),
                Column::Int32(vec![-12_345, 7], vec![1, 1]),
                Column::Fixed(vec![vec![0xFF; 16]], vec![0, 1]),
                Column::Bytes(vec![b"text", b"\xFF\x00\x01"], vec![1, 1]),
                Column::Int32(vec![3_723_004], vec![1, 0]),
            ],
        );

        let rows = read_all(&path, "name");
        assert_eq!(rows[0].as_ref().unwrap().key, "caf\u{e9} \"x\"".as_bytes());
        assert_eq!(
            value_text(&rows[0]),
            r#"{"name":"café \"x\"","flag":true,"ratio":0.25,"day":"2001-01-01","price":-123.45,"big":null,"raw":"text","at":"01:02:03.004"}"#
        );
        assert_eq!(
            value_text(&rows[1]),
            r#"{"name":"b","flag":null,"ratio":null,"day":null,"price":0.07,"big":-0.001,"raw":"/wAB","at":null}"#
        );
    }

    #[test]
    fn timestamp_key_is_string_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.parquet");
        let schema = "message m { required int64 at (TIMESTAMP(MICROS,false)); required int64 n; }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Int64(vec![0], vec![1]),
                Column::Int64(vec![-5], vec![1]),
            ],
        );
        let rows = read_all(&path, "at");
        assert_eq!(rows[0].as_ref().unwrap().key, b"1970-01-01 00:00:00");
        let rows = read_all(&path, "n");
        assert_eq!(rows[0].as_ref().unwrap().key, b"-5");
    }

    #[test]
    fn key_field_null_reports_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nulls.parquet");
        let schema = "message m { optional binary origin (STRING); required int64 delay; }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Bytes(vec![b"LAS", b"ATL"], vec![1, 0, 1]),
                Column::Int64(vec![1, 2, 3], vec![1, 1, 1]),
            ],
        );

        let mut reader = read_rows(&path, InputFormat::Parquet, "origin").unwrap();
        let rows: Vec<_> = reader.by_ref().collect();
        assert_eq!(rows.len(), 3);
        // Progress counts the row returned as an error too.
        assert_eq!(reader.progress().position, 3);
        let error = rows[1].as_ref().unwrap_err();
        assert!(matches!(
            error,
            LoadError::KeyFieldNull {
                location: Location::Row(2),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: row 2: key field \"origin\" is null; every record needs a key, so fill it in or \
                 choose another key field",
                path.display()
            )
        );
        assert_eq!(rows[2].as_ref().unwrap().key, b"ATL");
    }

    #[test]
    fn key_field_missing_from_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schema.parquet");
        let schema = "message m { required int64 delay; optional binary origin (STRING); }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Int64(vec![1], vec![1]),
                Column::Bytes(vec![b"LAS"], vec![1]),
            ],
        );

        let error = read_rows(&path, InputFormat::Parquet, "carrier").unwrap_err();
        assert!(matches!(
            error,
            LoadError::KeyFieldMissing {
                location: Location::Schema,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: schema: key field \"carrier\" is missing; the fields present are \"delay\", \
                 \"origin\"; choose one of them as the key field",
                path.display()
            )
        );
    }

    #[test]
    fn zero_rows_contains_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        write_parquet(&path, "message m { required int64 id; }", Vec::new());

        let error = read_rows(&path, InputFormat::Parquet, "id").unwrap_err();
        assert!(matches!(error, LoadError::Empty { .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "{} contains no records; expected at least one Parquet record",
                path.display()
            )
        );
    }

    #[test]
    fn text_file_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.parquet");
        std::fs::write(&path, b"id,name\n1,a\n").unwrap();

        let error = read_rows(&path, InputFormat::Parquet, "id").unwrap_err();
        assert!(matches!(error, LoadError::ParquetOpen { .. }));
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "{}: cannot open as a Parquet file: ",
                path.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("; check that the file is complete and in Parquet format"),
            "{message}"
        );
    }

    #[test]
    fn truncated_file_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whole.parquet");
        write_parquet(
            &path,
            "message m { required int64 id; }",
            vec![Column::Int64(vec![1, 2], vec![1, 1])],
        );
        let bytes = std::fs::read(&path).unwrap();
        let truncated = dir.path().join("truncated.parquet");
        std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();

        let error = read_rows(&truncated, InputFormat::Parquet, "id").unwrap_err();
        assert!(matches!(error, LoadError::ParquetOpen { .. }), "{error}");
    }

    #[test]
    fn interval_column_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interval.parquet");
        let schema =
            "message m { required int64 id; optional fixed_len_byte_array(12) span (INTERVAL); }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Int64(vec![1], vec![1]),
                Column::Fixed(vec![vec![0; 12]], vec![1]),
            ],
        );

        let error = read_rows(&path, InputFormat::Parquet, "id").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: schema: column \"span\" has type FIXED_LEN_BYTE_ARRAY (INTERVAL), which cannot \
                 be converted to JSON; drop or cast the column",
                path.display()
            )
        );
    }

    #[test]
    fn nested_schema_uses_record_api() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested.parquet");
        let schema = "message m {
            required int64 id;
            optional group loc { required binary city (STRING); required int32 zip; }
            optional group tags (LIST) { repeated group list { optional binary element (STRING); } }
            optional int64 at (TIMESTAMP(NANOS,true));
        }";
        // Row 1 has a location, two tags and a time. Row 2 has nulls. Row 3
        // has an empty tag list.
        write_parquet(
            &path,
            schema,
            vec![
                Column::Int64(vec![1, 2, 3], vec![1, 1, 1]),
                Column::Bytes(vec![b"Reno", b"Elko"], vec![1, 0, 1]),
                Column::Int32(vec![89_501, 89_801], vec![1, 0, 1]),
                Column::RepeatedBytes(vec![b"a", b"b"], vec![3, 3, 0, 1], vec![0, 1, 0, 0]),
                Column::Int64(vec![1_500_000_000], vec![1, 0, 0]),
            ],
        );

        let rows = read_all(&path, "id");
        assert_eq!(rows.len(), 3);
        assert_eq!(
            value_text(&rows[0]),
            r#"{"id":1,"loc":{"city":"Reno","zip":89501},"tags":["a","b"],"at":"1970-01-01 00:00:01.500000000"}"#
        );
        assert_eq!(
            value_text(&rows[1]),
            r#"{"id":2,"loc":null,"tags":null,"at":null}"#
        );
        assert_eq!(
            value_text(&rows[2]),
            r#"{"id":3,"loc":{"city":"Elko","zip":89801},"tags":[],"at":null}"#
        );
        assert_eq!(rows[2].as_ref().unwrap().key, b"3");
    }

    #[test]
    fn batches_span_row_groups() {
        // Two row groups, each longer than one batch, with small pages and
        // nulls, read through the column-reader path.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.parquet");
        let schema = "message m { required int64 id; optional binary name (STRING); }";
        let group = |ids: std::ops::Range<i64>| {
            let names: Vec<Vec<u8>> = ids
                .clone()
                .filter(|id| id % 7 != 0)
                .map(|id| format!("n{id}").into_bytes())
                .collect();
            let levels: Vec<i16> = ids.clone().map(|id| i16::from(id % 7 != 0)).collect();
            let present = vec![1; levels.len()];
            vec![
                Column::Int64(ids.collect(), present),
                Column::OwnedBytes(names, levels),
            ]
        };
        let properties = WriterProperties::builder()
            .set_data_page_row_count_limit(1000)
            .set_write_batch_size(1000)
            .build();
        write_row_groups(
            &path,
            schema,
            properties,
            vec![group(0..5000), group(5000..9000)],
        );

        let rows = read_all(&path, "id");
        assert_eq!(rows.len(), 9000);
        for (id, row) in rows.iter().enumerate() {
            let expected = if id % 7 == 0 {
                format!(r#"{{"id":{id},"name":null}}"#)
            } else {
                format!(r#"{{"id":{id},"name":"n{id}"}}"#)
            };
            assert_eq!(value_text(row), expected);
            assert_eq!(row.as_ref().unwrap().key, id.to_string().as_bytes());
        }
    }

    #[test]
    fn both_paths_agree_on_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.parquet");
        let schema = "message m {
            required binary name (STRING);
            optional int64 at (TIMESTAMP(MICROS,false));
            optional int32 price (DECIMAL(9,2));
            optional binary raw;
            optional int64 big (INTEGER(64,false));
        }";
        write_parquet(
            &path,
            schema,
            vec![
                Column::Bytes(vec![b"a\\b", b"\xE2\x82\xAC"], vec![1, 1]),
                Column::Int64(vec![-1], vec![1, 0]),
                Column::Int32(vec![5], vec![0, 1]),
                Column::Bytes(vec![b"\x00\xFF", b"ok"], vec![1, 1]),
                Column::Int64(vec![-1], vec![1, 0]),
            ],
        );

        let (columns, records) = values_by_both_paths(&path, "name", usize::MAX);
        assert_eq!(columns, records);
        assert_eq!(
            String::from_utf8(columns[0].clone()).unwrap(),
            r#"{"name":"a\\b","at":"1969-12-31 23:59:59.999999","price":null,"raw":"AP8=","big":18446744073709551615}"#
        );
        assert_eq!(
            String::from_utf8(columns[1].clone()).unwrap(),
            r#"{"name":"€","at":null,"price":0.05,"raw":"ok","big":null}"#
        );
    }

    #[test]
    fn both_paths_agree_on_flights() {
        let Some(path) = flights_path() else {
            return;
        };
        let (columns, records) = values_by_both_paths(&path, "origin", 20_000);
        assert_eq!(columns.len(), 20_000);
        assert_eq!(columns, records);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_323), (2001, 1, 1));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn timestamp_before_epoch() {
        let mut out = Vec::new();
        push_timestamp(&mut out, -1, MICROS_PER_SECOND, 6);
        assert_eq!(out, br#""1969-12-31 23:59:59.999999""#);
    }

    #[test]
    fn decimal_digits() {
        let cases: [(&[u8], i32, &str); 6] = [
            (&[0x00], 0, "0"),
            (&[0x00], 2, "0.00"),
            (&[0x30, 0x39], 2, "123.45"),
            (&[0xCF, 0xC7], 2, "-123.45"),
            (&[0x80], 0, "-128"),
            (
                &[
                    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00,
                ],
                0,
                "340282366920938463463374607431768211456",
            ),
        ];
        for (unscaled, scale, expected) in cases {
            let mut out = Vec::new();
            push_decimal(&mut out, unscaled, scale);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "{unscaled:?} scale {scale}"
            );
        }
    }

    #[test]
    fn base64_padding() {
        let cases: [(&[u8], &str); 4] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (data, expected) in cases {
            let mut out = Vec::new();
            push_base64(&mut out, data);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
