//! Parquet flow-log objects read as Arrow record batches, and each row made into a
//! [`Record`] straight from its typed cells: no text is written and parsed again. AWS writes
//! flow logs to Parquet as flat, optional columns of INT32, INT64 and strings; string columns
//! are read as dictionaries (keys into the column chunk's values), which spares copying each
//! string out of the page. Cells are converted a column at a time over blocks of rows that
//! stay in cache, and one record is filled from each row's values.
//!
//! A cell that does not fit its field (a port of 70000, an address that is not one) makes
//! its row a bad line with the field named, as the same value in a text line would.

use std::fs::File;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use flowlog::{
    value_of_int, value_of_text, ErrorKind, Field, Format, Kind, ParseError, Record, Value,
};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};

/// Where a column of the file goes in a record: its place in the format and its kind. None
/// for a column the format does not know (a field newer than this build).
type Placement = Option<(usize, Kind)>;

/// The rows of an object, a batch at a time.
pub struct ParquetRows {
    reader: ParquetRecordBatchReader,
    placements: Arc<[Placement]>,
    /// What is left of the last batch when a caller asked for fewer rows than it held.
    rest: Option<RecordBatch>,
}

/// Some rows of an object, in the file's columns.
pub struct RowBatch {
    batch: RecordBatch,
    placements: Arc<[Placement]>,
}

impl ParquetRows {
    /// Opens `path` and names the fields of its columns. Returns the reader and the format
    /// its known columns make, in the file's order. An error comes with its reason
    /// (`download`, `corrupt_parquet`, `parquet_schema`).
    pub fn open(
        path: &std::path::Path,
        batch_rows: usize,
    ) -> Result<(Self, Format), (&'static str, String)> {
        let file = File::open(path).map_err(|e| ("download", e.to_string()))?;
        let corrupt = |e: parquet::errors::ParquetError| ("corrupt_parquet", e.to_string());
        // The footer is read once; the schema it gives is then read again with string columns
        // as dictionaries.
        let plain = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(corrupt)?;
        let schema = plain.schema().clone();
        let known: Vec<Field> = schema
            .fields()
            .iter()
            .filter_map(|f| Field::from_name(f.name()))
            .collect();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let format = Format::new(&known)
            .map_err(|e| ("parquet_schema", format!("columns {names:?}: {e}")))?;
        let placements: Arc<[Placement]> = schema
            .fields()
            .iter()
            .map(|f| {
                let field = Field::from_name(f.name())?;
                Some((format.position(field)?, field.kind()))
            })
            .collect();
        // A known field in a type no flow-log writer uses would be read as absent in every
        // row: refused, with the column named, rather than judged on nothing.
        for (f, placed) in schema.fields().iter().zip(placements.iter()) {
            if placed.is_some() && !readable(f.data_type()) {
                return Err((
                    "parquet_schema",
                    format!(
                        "column {} is {}, not a type flow logs are written in (INT32, INT64, string)",
                        f.name(),
                        f.data_type()
                    ),
                ));
            }
        }
        let hinted = Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 => Arc::new(f.as_ref().clone().with_data_type(
                        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    )),
                    _ => f.clone(),
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        );
        let options = ArrowReaderOptions::new().with_schema(Arc::new(hinted));
        let reader = ArrowReaderMetadata::try_new(plain.metadata().clone(), options)
            .and_then(|m| {
                ParquetRecordBatchReaderBuilder::new_with_metadata(file, m)
                    .with_batch_size(batch_rows.max(1))
                    .build()
            })
            .map_err(corrupt)?;
        Ok((
            ParquetRows {
                reader,
                placements,
                rest: None,
            },
            format,
        ))
    }

    /// The next rows, at most `most`; None when the file has ended.
    pub fn next_rows(&mut self, most: usize) -> Result<Option<RowBatch>, String> {
        let batch = match self.rest.take() {
            Some(b) => b,
            None => loop {
                match self.reader.next() {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(b)) if b.num_rows() == 0 => continue,
                    Some(Ok(b)) => break b,
                }
            },
        };
        let batch = if batch.num_rows() > most {
            self.rest = Some(batch.slice(most, batch.num_rows() - most));
            batch.slice(0, most)
        } else {
            batch
        };
        Ok(Some(RowBatch {
            batch,
            placements: self.placements.clone(),
        }))
    }
}

/// A column's numbers written as text, all in one string, and where each row's is (None
/// for a null).
type NumbersAsText = (String, Vec<Option<(usize, usize)>>);

/// Whether a column of this type can be read into a field.
fn readable(t: &DataType) -> bool {
    match t {
        DataType::Int32 | DataType::Int64 | DataType::Utf8 | DataType::LargeUtf8 => true,
        DataType::Dictionary(k, v) => **k == DataType::Int32 && **v == DataType::Utf8,
        _ => false,
    }
}

/// Rows converted together: their values (rows × width) stay in the core's cache while
/// each column is written into them and each row is read out.
const BLOCK_ROWS: usize = 256;

/// Where one column's cells of a block go: rows `first..first + rows` of the batch, into
/// `values` (row-major, `width` values a row) at `at`; `column` is its place among the
/// placed columns, for the errors.
struct Put {
    first: usize,
    rows: usize,
    width: usize,
    at: usize,
    column: usize,
}

impl Put {
    /// Converts the cells: a null is absent; a cell that does not fit its field is pushed to
    /// `errors` with its row in the block.
    fn cells<'v>(
        &self,
        values: &mut [Value<'v>],
        errors: &mut Vec<(usize, usize, ErrorKind)>,
        valid: impl Fn(usize) -> bool,
        cell: impl Fn(usize) -> Result<Value<'v>, ErrorKind>,
    ) {
        for row in 0..self.rows {
            let slot = &mut values[row * self.width + self.at];
            if !valid(self.first + row) {
                *slot = Value::Absent;
                continue;
            }
            match cell(self.first + row) {
                Ok(v) => *slot = v,
                Err(e) => errors.push((row, self.column, e)),
            }
        }
    }
}

impl RowBatch {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Calls `each` with every row in order: its index in the batch and its record, or
    /// what is wrong with it. The cells are converted a column at a time (one loop per
    /// column's type, no dispatch per cell), then each row's values fill one record.
    pub fn for_each(
        &self,
        format: &Format,
        mut each: impl for<'r> FnMut(usize, Result<&Record<'r>, ParseError>),
    ) {
        let rows = self.batch.num_rows();
        let width = format.len();
        let placed: Vec<(usize, usize, Kind)> = self
            .placements
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|(at, kind)| (i, at, kind)))
            .filter(|(_, at, _)| *at < width)
            .collect();
        // Text fields a writer stored as numbers: their text, owned for the batch, all in one
        // string (a row's number is at `spans[row]`; None for a null).
        let numbers_as_text: Vec<NumbersAsText> = placed
            .iter()
            .map(|(i, _, kind)| {
                let a = self.batch.column(*i);
                let numbers: Vec<Option<i64>> = match (kind, a.data_type()) {
                    (Kind::Text, DataType::Int32) => a
                        .as_primitive::<Int32Type>()
                        .iter()
                        .map(|n| n.map(i64::from))
                        .collect(),
                    (Kind::Text, DataType::Int64) => a.as_primitive::<Int64Type>().iter().collect(),
                    _ => Vec::new(),
                };
                let mut text = String::new();
                let spans = numbers
                    .into_iter()
                    .map(|n| {
                        n.map(|n| {
                            use std::fmt::Write as _;
                            let start = text.len();
                            let _ = write!(text, "{n}");
                            (start, text.len())
                        })
                    })
                    .collect();
                (text, spans)
            })
            .collect();
        let number_text = |n: usize, row: usize| -> Option<&str> {
            let (text, spans) = &numbers_as_text[n];
            let (start, end) = (*spans.get(row)?)?;
            text.get(start..end)
        };
        let block = BLOCK_ROWS.min(rows);
        let mut values: Vec<Value<'_>> = vec![Value::Absent; block.saturating_mul(width)];
        let mut errors: Vec<(usize, usize, ErrorKind)> = Vec::new();
        let mut record = Record::empty(format);
        let mut first = 0;
        while first < rows {
            let n_rows = block.min(rows - first);
            errors.clear();
            for (n, &(i, at, kind)) in placed.iter().enumerate() {
                let array = self.batch.column(i);
                let (v, e) = (&mut values, &mut errors);
                let put = Put {
                    first,
                    rows: n_rows,
                    width,
                    at,
                    column: n,
                };
                match array.data_type() {
                    DataType::Int32 | DataType::Int64 if kind == Kind::Text => put.cells(
                        v,
                        e,
                        |r| array.is_valid(r),
                        |r| Ok(number_text(n, r).map_or(Value::Absent, Value::Text)),
                    ),
                    DataType::Int32 => {
                        let a = array.as_primitive::<Int32Type>();
                        put.cells(
                            v,
                            e,
                            |r| a.is_valid(r),
                            |r| value_of_int(kind, i64::from(a.value(r))),
                        )
                    }
                    DataType::Int64 => {
                        let a = array.as_primitive::<Int64Type>();
                        put.cells(v, e, |r| a.is_valid(r), |r| value_of_int(kind, a.value(r)))
                    }
                    DataType::Utf8 => {
                        let a = array.as_string::<i32>();
                        put.cells(v, e, |r| a.is_valid(r), |r| value_of_text(kind, a.value(r)))
                    }
                    DataType::LargeUtf8 => {
                        let a = array.as_string::<i64>();
                        put.cells(v, e, |r| a.is_valid(r), |r| value_of_text(kind, a.value(r)))
                    }
                    DataType::Dictionary(k, d)
                        if **k == DataType::Int32 && **d == DataType::Utf8 =>
                    {
                        let a = array.as_dictionary::<Int32Type>();
                        let keys = a.keys();
                        let dictionary = a.values().as_string::<i32>();
                        put.cells(
                            v,
                            e,
                            |r| keys.is_valid(r),
                            |r| {
                                // Arrow checked every key against the dictionary when it built
                                // the array.
                                match usize::try_from(keys.value(r)) {
                                    Ok(k) if k < dictionary.len() && dictionary.is_valid(k) => {
                                        value_of_text(kind, dictionary.value(k))
                                    }
                                    _ => Ok(Value::Absent),
                                }
                            },
                        )
                    }
                    // Refused at open for the fields this build reads.
                    _ => {}
                }
            }
            // The first cell at fault in each bad row, by column order.
            errors.sort_by_key(|(row, n, _)| (*row, *n));
            errors.dedup_by_key(|(row, _, _)| *row);
            let mut bad = errors.drain(..).peekable();
            for row in 0..n_rows {
                if let Some((_, n, kind)) = bad.next_if(|(r, _, _)| *r == row) {
                    let (i, at, _) = placed[n];
                    each(
                        first + row,
                        Err(ParseError {
                            kind,
                            field: format.fields().get(at).copied(),
                            column: i + 1,
                        }),
                    );
                    continue;
                }
                record.fill(&values[row * width..(row + 1) * width]);
                each(first + row, Ok(&record));
            }
            drop(bad);
            first += n_rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Rows in AWS's Parquet schema for flow logs (INT32 ports and protocol, INT64
    /// counters and times, strings for the rest, every column optional), written by pyarrow:
    /// row 2 has nulls, row 3 a destination port no TCP header can hold. The account id is
    /// stored as a number, as a writer that sees only digits stores it: read as its text.
    fn aws_shaped(path: &std::path::Path) {
        let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
n = 10
t = pa.table({
    "version": pa.array([2] * n, pa.int32()),
    "account_id": pa.array([123456789012] * (n - 1) + [None], pa.int64()),
    "interface_id": pa.array(["eni-0a1"] * n, pa.string()),
    "srcaddr": pa.array([f"10.0.1.{i}" for i in range(n)], pa.string()),
    "dstaddr": pa.array(["52.94.0.7", None] + ["2001:db8::1"] * (n - 2), pa.string()),
    "srcport": pa.array([40000 + i for i in range(n)], pa.int32()),
    "dstport": pa.array([443, None, 70000] + [22] * (n - 3), pa.int32()),
    "protocol": pa.array([6] * n, pa.int32()),
    "packets": pa.array([3] * n, pa.int64()),
    "bytes": pa.array([1500 * i for i in range(n)], pa.int64()),
    "start": pa.array([1764547200] * n, pa.int64()),
    "end": pa.array([1764547260000] * n, pa.int64()),
    "action": pa.array(["ACCEPT", "REJECT"] * (n // 2), pa.string()),
    "log_status": pa.array(["OK"] * n, pa.string()),
    "a_column_of_a_later_release": pa.array([1.5] * n, pa.float64()),
})
pq.write_table(t, sys.argv[1], compression="gzip", row_group_size=4)
"#;
        let ok = Command::new(egresswatch_testkit::python_with_pyarrow())
            .args(["-c", script])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    #[test]
    fn rows_become_records_from_their_typed_cells_and_a_bad_cell_names_its_field() {
        let dir = std::env::temp_dir().join(format!("ew-parquet-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.parquet");
        aws_shaped(&path);
        let (mut rows, format) = ParquetRows::open(&path, 3).unwrap();
        assert_eq!(
            format.to_aws_string(),
            "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}"
        );
        // Batches of three, one of them cut to two, across row groups of four.
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut most = 3;
        while let Some(batch) = rows.next_rows(most).unwrap() {
            sizes.push(batch.len());
            batch.for_each(&format, |_, r| {
                seen.push(match r {
                    Ok(r) => Ok((
                        r.account_id().map(String::from),
                        r.srcaddr(),
                        r.dstaddr(),
                        r.dstport(),
                        r.bytes(),
                        r.end(),
                        r.action(),
                    )),
                    Err(e) => Err((e.reason(), e.field.map(|f| f.name()), e.to_string())),
                })
            });
            most = if most == 3 { 2 } else { 3 };
        }
        assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
        assert_eq!(seen.len(), 10);
        let first = seen[0].clone().unwrap();
        assert_eq!(first.0.as_deref(), Some("123456789012"));
        assert_eq!(first.1, Some("10.0.1.0".parse().unwrap()));
        assert_eq!(first.2, Some("52.94.0.7".parse().unwrap()));
        assert_eq!(first.3, Some(443));
        assert_eq!(first.4, Some(0));
        // Milliseconds are seconds, as in a text line.
        assert_eq!(first.5, Some(1_764_547_260));
        assert_eq!(first.6, Some(flowlog::Action::Accept));
        // Null cells are absent fields.
        let second = seen[1].clone().unwrap();
        assert_eq!((second.2, second.3), (None, None));
        assert_eq!(second.6, Some(flowlog::Action::Reject));
        // A port of 70,000: that row is a bad line, with the field and the reason.
        let (reason, field, text) = seen[2].clone().unwrap_err();
        assert_eq!((reason, field), ("out_of_range", Some("dstport")));
        assert!(text.contains("70000"), "{text}");
        let last = seen[9].clone().unwrap();
        assert_eq!(last.0, None, "a null account id is absent");
        assert_eq!(seen[8].clone().unwrap().0.as_deref(), Some("123456789012"));
        assert_eq!(last.2, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(last.4, Some(13_500));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file another project wrote (flowlogs-reader's test data, written with pandas):
    /// numbers as strings, an account id as a number, and nulls written as the text `None`.
    #[test]
    fn a_parquet_file_written_by_another_project_is_read_row_by_row() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/flowlogs-reader/flows.parquet"
        );
        let (mut rows, format) = ParquetRows::open(std::path::Path::new(path), 8).unwrap();
        assert_eq!(
            format.to_aws_string(),
            flowlog::Format::default_v2().to_aws_string()
        );
        let batch = rows.next_rows(8).unwrap().unwrap();
        let mut seen = Vec::new();
        batch.for_each(&format, |_, r| {
            seen.push(match r {
                Ok(r) => Ok((
                    r.account_id().map(String::from),
                    r.srcaddr(),
                    r.srcport(),
                    r.dstport(),
                    r.bytes(),
                    r.action(),
                )),
                Err(e) => Err((e.reason(), e.field.map(|f| f.name()))),
            })
        });
        assert!(rows.next_rows(8).unwrap().is_none());
        assert_eq!(
            seen,
            vec![
                Ok((
                    Some("123456789010".to_string()),
                    Some("198.51.100.1".parse().unwrap()),
                    Some(443),
                    Some(49152),
                    Some(840),
                    Some(flowlog::Action::Accept),
                )),
                // `None` is not a port: the row is a bad line naming the first field at fault.
                Err(("invalid_number", Some("srcport"))),
                // Nor is 8080 a protocol number.
                Err(("out_of_range", Some("protocol"))),
            ]
        );
    }

    #[test]
    fn a_known_field_in_a_type_no_writer_uses_refuses_the_object() {
        let dir = std::env::temp_dir().join(format!("ew-parquet-type-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("floats.parquet");
        let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"srcaddr": pa.array(["10.0.0.1"]), "bytes": pa.array([1.5])}), sys.argv[1])
"#;
        let ok = Command::new(egresswatch_testkit::python_with_pyarrow())
            .args(["-c", script])
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success());
        let (reason, detail) = ParquetRows::open(&path, 8).err().unwrap();
        assert_eq!(reason, "parquet_schema");
        assert!(detail.contains("column bytes is Float64"), "{detail}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cell_that_is_not_its_field_is_a_bad_row_not_a_failure() {
        assert!(matches!(
            value_of_text(Kind::Addr, "10.0.0.300"),
            Err(ErrorKind::InvalidAddress { .. })
        ));
        assert!(matches!(
            value_of_int(Kind::Port, -1),
            Err(ErrorKind::InvalidNumber { .. })
        ));
        assert!(matches!(
            value_of_int(Kind::Addr, 167_772_161),
            Err(ErrorKind::InvalidValue { .. })
        ));
        assert_eq!(value_of_text(Kind::Port, "-"), Ok(Value::Absent));
        assert_eq!(value_of_text(Kind::Text, ""), Ok(Value::Absent));
    }
}
