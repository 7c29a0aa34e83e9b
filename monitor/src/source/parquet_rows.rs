//! Parquet flow-log objects read a column at a time: each column's values of a batch of rows
//! are decoded with the typed column readers, then the rows are written as text lines in the
//! format the file's columns name, for the same parser every other source feeds. AWS writes
//! flow logs to Parquet as flat columns of INT32, INT64 and strings (BYTE_ARRAY), each
//! optional; a column of another type is written as `-` (flow logs have none).
//!
//! The row API (`RowIter`) builds a `Row` of boxed `Field`s for every row, which costs far
//! more than the records' parsing; column batches cost a few copies per value.

use std::fs::File;

use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};

/// One column of the file and where its text goes in a line (None: the format does not
/// know this field, a field newer than this build).
struct Column {
    at: Option<usize>,
    max_def_level: i16,
    reader: Option<ColumnReader>,
}

/// The text of one column for the rows of a batch: every cell in `text`, ending at `ends`.
#[derive(Default)]
struct Cells {
    text: Vec<u8>,
    ends: Vec<usize>,
}

pub struct ParquetRows {
    file: SerializedFileReader<File>,
    row_group: usize,
    columns: Vec<Column>,
    /// The format's width: how many cells a line has.
    width: usize,
    cells: Vec<Cells>,
    defs: Vec<i16>,
    ints: Vec<i32>,
    longs: Vec<i64>,
    bytes: Vec<ByteArray>,
}

/// `n` in decimal, appended.
fn push_int(out: &mut Vec<u8>, n: i64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[at..]);
}

/// A string value as a cell: empty is `-`, and a space (which would shift every column after
/// it) becomes `_`.
fn push_text(out: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    let start = out.len();
    out.extend_from_slice(value);
    for b in &mut out[start..] {
        if *b == b' ' || *b == b'\n' {
            *b = b'_';
        }
    }
}

impl ParquetRows {
    /// Reads from `file`; `positions[i]` is where the file's column `i` goes in a line of
    /// `width` cells.
    pub fn new(
        file: SerializedFileReader<File>,
        positions: Vec<Option<usize>>,
        width: usize,
    ) -> Self {
        let schema = file.metadata().file_metadata().schema_descr_ptr();
        let columns = positions
            .into_iter()
            .enumerate()
            .map(|(i, at)| Column {
                at,
                max_def_level: schema.column(i).max_def_level(),
                reader: None,
            })
            .collect();
        ParquetRows {
            file,
            row_group: 0,
            columns,
            width,
            cells: (0..width).map(|_| Cells::default()).collect(),
            defs: Vec::new(),
            ints: Vec::new(),
            longs: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// Opens the next row group's column readers; false when there is none.
    fn next_row_group(&mut self) -> parquet::errors::Result<bool> {
        if self.row_group >= self.file.num_row_groups() {
            return Ok(false);
        }
        let group = self.file.get_row_group(self.row_group)?;
        for (i, c) in self.columns.iter_mut().enumerate() {
            c.reader = Some(group.get_column_reader(i)?);
        }
        self.row_group += 1;
        Ok(true)
    }

    /// Appends up to `most` rows to `out` as text lines; returns how many (0: the file ended).
    pub fn read(&mut self, most: usize, out: &mut Vec<u8>) -> parquet::errors::Result<usize> {
        loop {
            if self.columns.iter().any(|c| c.reader.is_none()) && !self.next_row_group()? {
                return Ok(0);
            }
            let rows = self.read_cells(most)?;
            if rows == 0 {
                // This row group is done: on to the next.
                for c in &mut self.columns {
                    c.reader = None;
                }
                continue;
            }
            for row in 0..rows {
                for (p, cells) in self.cells.iter().enumerate() {
                    if p > 0 {
                        out.push(b' ');
                    }
                    if cells.ends.is_empty() {
                        out.push(b'-');
                        continue;
                    }
                    let start = if row == 0 { 0 } else { cells.ends[row - 1] };
                    out.extend_from_slice(&cells.text[start..cells.ends[row]]);
                }
                out.push(b'\n');
            }
            return Ok(rows);
        }
    }

    /// Decodes up to `most` rows of every column into `cells`; every column gives the same
    /// number of rows (they are one row group's).
    fn read_cells(&mut self, most: usize) -> parquet::errors::Result<usize> {
        for c in &mut self.cells {
            c.text.clear();
            c.ends.clear();
        }
        let mut rows: Option<usize> = None;
        let width = self.width;
        for column in &mut self.columns {
            let Some(reader) = column.reader.as_mut() else {
                continue;
            };
            let mut scratch = Cells::default();
            let cells = match column.at {
                Some(at) if at < width => &mut self.cells[at],
                _ => &mut scratch,
            };
            let read = read_column(
                reader,
                column.max_def_level,
                most,
                cells,
                &mut self.defs,
                &mut self.ints,
                &mut self.longs,
                &mut self.bytes,
            )?;
            match rows {
                None => rows = Some(read),
                Some(n) if n != read => {
                    return Err(parquet::errors::ParquetError::General(format!(
                        "columns of one row group hold different numbers of rows ({n} and {read})"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(rows.unwrap_or(0))
    }
}

/// Reads up to `most` rows of one column into `cells`, one cell per row (`-` for a null).
#[allow(clippy::too_many_arguments)]
fn read_column(
    reader: &mut ColumnReader,
    max_def_level: i16,
    most: usize,
    cells: &mut Cells,
    defs: &mut Vec<i16>,
    ints: &mut Vec<i32>,
    longs: &mut Vec<i64>,
    bytes: &mut Vec<ByteArray>,
) -> parquet::errors::Result<usize> {
    defs.clear();
    // Reads until `most` rows or the column chunk's end: a call may stop at a page boundary.
    macro_rules! fill {
        ($r:expr, $values:expr) => {{
            $values.clear();
            let mut rows = 0;
            while rows < most {
                let (n, _, _) = $r.read_records(
                    most - rows,
                    (max_def_level > 0).then_some(&mut *defs),
                    None,
                    &mut *$values,
                )?;
                if n == 0 {
                    break;
                }
                rows += n;
            }
            rows
        }};
    }
    let rows = match reader {
        ColumnReader::Int32ColumnReader(r) => fill!(r, ints),
        ColumnReader::Int64ColumnReader(r) => fill!(r, longs),
        ColumnReader::ByteArrayColumnReader(r) => fill!(r, bytes),
        // Flow logs have no other types; their rows are skipped as values, written as `-`.
        ColumnReader::BoolColumnReader(r) => {
            let mut skipped = Vec::new();
            let skipped = &mut skipped;
            fill!(r, skipped)
        }
        ColumnReader::FloatColumnReader(r) => {
            let mut skipped = Vec::new();
            let skipped = &mut skipped;
            fill!(r, skipped)
        }
        ColumnReader::DoubleColumnReader(r) => {
            let mut skipped = Vec::new();
            let skipped = &mut skipped;
            fill!(r, skipped)
        }
        ColumnReader::Int96ColumnReader(r) => {
            let mut skipped = Vec::new();
            let skipped = &mut skipped;
            fill!(r, skipped)
        }
        ColumnReader::FixedLenByteArrayColumnReader(r) => {
            let mut skipped = Vec::new();
            let skipped = &mut skipped;
            fill!(r, skipped)
        }
    };
    let mut next_value = 0usize;
    for row in 0..rows {
        let present = max_def_level == 0 || defs.get(row) == Some(&max_def_level);
        if present {
            match reader {
                ColumnReader::Int32ColumnReader(_) => match ints.get(next_value) {
                    Some(v) => push_int(&mut cells.text, i64::from(*v)),
                    None => cells.text.push(b'-'),
                },
                ColumnReader::Int64ColumnReader(_) => match longs.get(next_value) {
                    Some(v) => push_int(&mut cells.text, *v),
                    None => cells.text.push(b'-'),
                },
                ColumnReader::ByteArrayColumnReader(_) => match bytes.get(next_value) {
                    Some(v) => push_text(&mut cells.text, v.data()),
                    None => cells.text.push(b'-'),
                },
                _ => cells.text.push(b'-'),
            }
            next_value += 1;
        } else {
            cells.text.push(b'-');
        }
        cells.ends.push(cells.text.len());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_written_in_decimal() {
        let mut out = Vec::new();
        for n in [0, 7, 443, -1, 1_764_547_200, i64::MIN, i64::MAX] {
            out.clear();
            push_int(&mut out, n);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), n.to_string());
        }
    }

    #[test]
    fn a_text_value_never_splits_a_line() {
        let mut out = Vec::new();
        push_text(&mut out, b"a b\nc");
        push_text(&mut out, b"");
        assert_eq!(out, b"a_b_c-");
    }
}
