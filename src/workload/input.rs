//! Reading dataset files and saying exactly what is wrong with them.
//!
//! Sources validate each entry into their own types with the field helpers here; every failure
//! becomes a [`BadEntry`] naming the line (or array item) and the field. [`Problems`] collects
//! them: by default the run stops before sending anything and lists up to [`MAX_LISTED`];
//! with `--skip-invalid` the source leaves the entry out and the report counts it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::DatasetError;

/// How many bad entries an error lists.
pub const MAX_LISTED: usize = 20;

/// Where in a file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based item of a top-level JSON array (or of a named array in a JSON object).
    Item(usize),
    /// The file as a whole.
    File,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Item(n) => write!(f, "item {n}"),
            Loc::File => write!(f, "file"),
        }
    }
}

/// What is wrong with one field of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `messages[2].role`; empty for the entry itself.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One bad entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    pub loc: Loc,
    pub error: FieldError,
}

impl fmt::Display for BadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.error.field.is_empty() {
            write!(f, "{}: {}", self.loc, self.error.reason)
        } else {
            write!(
                f,
                "{}, field `{}`: {}",
                self.loc, self.error.field, self.error.reason
            )
        }
    }
}

/// The error a run stops with when its dataset has bad entries.
#[derive(Debug)]
pub struct InvalidInput {
    pub path: String,
    pub listed: Vec<BadEntry>,
    pub total: u64,
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.total == 1 { "y" } else { "ies" };
        write!(
            f,
            "{}: {} invalid entr{s}; nothing was sent (--skip-invalid leaves them out)",
            self.path, self.total
        )?;
        for b in &self.listed {
            write!(f, "\n  {}: {b}", self.path)?;
        }
        if self.total > self.listed.len() as u64 {
            write!(
                f,
                "\n  … and {} more",
                self.total - self.listed.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Collects bad entries for one build.
#[derive(Debug)]
pub struct Problems {
    path: String,
    skip_invalid: bool,
    listed: Vec<BadEntry>,
    total: u64,
    /// `--max-line-bytes`: the readers here take it from the collector every source is given.
    max_line_bytes: usize,
}

impl Problems {
    pub fn new(path: Option<&Path>, skip_invalid: bool) -> Problems {
        Problems {
            path: path.map_or_else(|| "dataset".to_string(), |p| p.display().to_string()),
            skip_invalid,
            listed: Vec::new(),
            total: 0,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// Sets `--max-line-bytes` (default [`DEFAULT_MAX_LINE_BYTES`]).
    pub fn with_max_line_bytes(mut self, max_line_bytes: usize) -> Problems {
        self.max_line_bytes = max_line_bytes;
        self
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Records a bad entry; the caller leaves the entry out.
    pub fn report(&mut self, loc: Loc, error: FieldError) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(BadEntry { loc, error });
        }
    }

    /// Bad entries so far.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn skip_invalid(&self) -> bool {
        self.skip_invalid
    }

    /// The entries listed so far (tests).
    pub fn listed(&self) -> &[BadEntry] {
        &self.listed
    }

    /// `Ok(skipped)` when there were none or `--skip-invalid` is on; the listing otherwise.
    pub fn finish(self) -> Result<u64, DatasetError> {
        if self.total == 0 || self.skip_invalid {
            return Ok(self.total);
        }
        Err(DatasetError::Invalid(InvalidInput {
            path: self.path,
            listed: self.listed,
            total: self.total,
        }))
    }
}

/// Default of `--max-line-bytes`: 64 MiB. The longest real dataset lines we know are SWE-smith
/// trajectories of a few MB (ShareGPT conversations and trace rows are KB); 64 MiB is ten times
/// that, yet a run reading `/dev/zero`, a binary file or a whole JSON dump on one line stops after
/// reading 64 MiB instead of growing one line until memory runs out.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

/// The UTF-8 byte-order mark some editors (Windows) write at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The lines of a file, read with a bounded buffer: one line at a time, never more than
/// `max_line_bytes` of it in memory. Tracks the line number and strips a byte-order mark at the
/// start of the file.
pub struct Lines<R> {
    reader: R,
    max_line_bytes: usize,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: usize,
}

/// Why [`Lines::next_line`] could not give a line.
#[derive(Debug)]
pub enum LineError {
    Io(std::io::Error),
    /// Line `line` is longer than the limit (it was not read to its end).
    TooLong {
        line: usize,
    },
}

impl LineError {
    /// The dataset error for this line error in `path`, read with limit `max`.
    fn in_file(self, path: &Path, max: usize) -> DatasetError {
        match self {
            LineError::Io(source) => DatasetError::Io {
                path: path.to_path_buf(),
                source,
            },
            LineError::TooLong { line } => DatasetError::TooLong {
                path: path.to_path_buf(),
                loc: Loc::Line(line),
                max,
            },
        }
    }
}

impl<R: std::io::BufRead> Lines<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Lines<R> {
        Lines {
            reader,
            max_line_bytes,
            buf: Vec::new(),
            line: 0,
        }
    }

    /// The next line (without its `\n`) and its 1-based number, `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<(usize, &[u8])>, LineError> {
        self.buf.clear();
        let mut read_any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LineError::Io(e)),
            };
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if self.buf.len() + take > self.max_line_bytes {
                return Err(LineError::TooLong {
                    line: self.line + 1,
                });
            }
            self.buf.extend_from_slice(&chunk[..take]);
            self.reader.consume(take + usize::from(done));
            if done {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        self.line += 1;
        let mut line = &self.buf[..];
        if self.line == 1 {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        Ok(Some((self.line, line)))
    }
}

/// Opens a dataset file for [`Lines`].
fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(std::io::BufReader::with_capacity(1 << 16, file))
}

/// Calls `f` with every non-blank line of `reader` (trimmed, as text) and its 1-based line
/// number. A line that is not UTF-8 goes to `problems`; a line longer than the limit, a read
/// error, or a file with no non-blank line at all stops the read with an error naming `path`.
pub fn each_line_in(
    reader: impl std::io::BufRead,
    path: &Path,
    problems: &mut Problems,
    mut f: impl FnMut(Loc, &str, &mut Problems),
) -> Result<(), DatasetError> {
    let max = problems.max_line_bytes();
    let mut lines = Lines::new(reader, max);
    let mut any = false;
    loop {
        let (n, bytes) = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => return Err(e.in_file(path, max)),
        };
        let loc = Loc::Line(n);
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let text = text.trim();
                if !text.is_empty() {
                    any = true;
                    f(loc, text, problems);
                }
            }
            Err(e) => {
                any = true;
                problems.report(loc, not_utf8(e));
            }
        }
    }
    if !any {
        return Err(DatasetError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The problem of a line that is not UTF-8.
fn not_utf8(e: std::str::Utf8Error) -> FieldError {
    FieldError::new("", format!("not UTF-8 ({e})"))
}

/// [`each_line_in`] over the file at `path`.
pub fn each_line(
    path: &Path,
    problems: &mut Problems,
    f: impl FnMut(Loc, &str, &mut Problems),
) -> Result<(), DatasetError> {
    each_line_in(open(path)?, path, problems, f)
}

/// Calls `f` with every non-blank line of a JSONL file parsed as JSON, and its 1-based line
/// number; lines that are not JSON (or not UTF-8) go to `problems`. Reads line by line, so only
/// one line's text and JSON tree are alive at once besides what `f` keeps.
pub fn each_jsonl(
    path: &Path,
    problems: &mut Problems,
    f: impl FnMut(Loc, Value, &mut Problems),
) -> Result<(), DatasetError> {
    each_jsonl_in(open(path)?, path, problems, f)
}

/// [`each_jsonl`] over any reader (`path` names it in errors).
pub fn each_jsonl_in(
    reader: impl std::io::BufRead,
    path: &Path,
    problems: &mut Problems,
    mut f: impl FnMut(Loc, Value, &mut Problems),
) -> Result<(), DatasetError> {
    each_line_in(
        reader,
        path,
        problems,
        |loc, line, problems| match serde_json::from_str::<Value>(line) {
            Ok(v) => f(loc, v, problems),
            Err(e) => problems.report(loc, FieldError::new("", format!("invalid JSON ({e})"))),
        },
    )
}

/// The whole text of a file that may be one JSON document spread over lines (SWE-smith's
/// pre-built file) or JSONL: read through [`Lines`], so no line exceeds the limit. A line that is
/// not UTF-8 goes to `problems` and reads as blank, so every other line keeps its number; a
/// byte-order mark at the start is dropped; a file with no non-blank line is an error.
pub fn read_text(path: &Path, problems: &mut Problems) -> Result<String, DatasetError> {
    read_text_in(open(path)?, path, problems)
}

/// [`read_text`] over any reader.
pub fn read_text_in(
    reader: impl std::io::BufRead,
    path: &Path,
    problems: &mut Problems,
) -> Result<String, DatasetError> {
    let max = problems.max_line_bytes();
    let mut lines = Lines::new(reader, max);
    let mut text = String::new();
    let mut any = false;
    loop {
        match lines.next_line() {
            Ok(Some((n, bytes))) => {
                match std::str::from_utf8(bytes) {
                    Ok(t) => {
                        any |= !t.trim().is_empty();
                        text.push_str(t);
                    }
                    Err(e) => {
                        any = true;
                        problems.report(Loc::Line(n), not_utf8(e));
                    }
                }
                text.push('\n');
            }
            Ok(None) => break,
            Err(e) => return Err(e.in_file(path, max)),
        }
    }
    if !any {
        return Err(DatasetError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Every non-blank line of a JSONL file parsed as JSON, with its 1-based line number. Lines that
/// are not JSON go to `problems` (and are left out).
pub fn jsonl_values(
    path: &Path,
    problems: &mut Problems,
) -> Result<Vec<(Loc, Value)>, DatasetError> {
    let mut out = Vec::new();
    each_jsonl(path, problems, |loc, v, _| out.push((loc, v)))?;
    Ok(out)
}

/// [`jsonl_values`] over text already read.
#[cfg(test)]
pub fn jsonl_values_of(text: &str, problems: &mut Problems) -> Vec<(Loc, Value)> {
    let mut out = Vec::new();
    // An empty text is an empty list here; only files are named.
    let _ = each_jsonl_in(text.as_bytes(), Path::new("text"), problems, |loc, v, _| {
        out.push((loc, v))
    });
    out
}

/// A path below `parent`: `parent.key` (or `key` at the top).
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The JSON type name used in messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `v` as an object, else an error at `path`.
pub fn as_object<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, FieldError> {
    v.as_object()
        .ok_or_else(|| FieldError::new(path, format!("expected an object, got {}", type_name(v))))
}

/// `v` as an array, else an error at `path`.
pub fn as_array<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>, FieldError> {
    v.as_array()
        .ok_or_else(|| FieldError::new(path, format!("expected an array, got {}", type_name(v))))
}

/// A required field.
pub fn required<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'v Value, FieldError> {
    obj.get(key)
        .ok_or_else(|| FieldError::new(join(parent, key), "missing"))
}

/// A required string field.
pub fn req_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'v str, FieldError> {
    let v = required(obj, key, parent)?;
    v.as_str().ok_or_else(|| {
        FieldError::new(
            join(parent, key),
            format!("expected a string, got {}", type_name(v)),
        )
    })
}

/// An optional string field (absent or null is `None`).
pub fn opt_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'v str>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(FieldError::new(
            join(parent, key),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

/// `v` as a non-negative integer (a float with no fraction is accepted: 512.0).
pub fn as_count(v: &Value, path: &str) -> Result<u64, FieldError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(n) = v.as_i64() {
        return Err(FieldError::new(
            path,
            format!("must not be negative, got {n}"),
        ));
    }
    if let Some(f) = v.as_f64() {
        if f < 0.0 {
            return Err(FieldError::new(
                path,
                format!("must not be negative, got {f}"),
            ));
        }
        if f.fract() == 0.0 && f <= u64::MAX as f64 {
            return Ok(f as u64);
        }
        return Err(FieldError::new(
            path,
            format!("expected a whole number, got {f}"),
        ));
    }
    Err(FieldError::new(
        path,
        format!("expected a non-negative integer, got {}", type_name(v)),
    ))
}

/// A required non-negative integer field.
pub fn req_count(obj: &Map<String, Value>, key: &str, parent: &str) -> Result<u64, FieldError> {
    as_count(required(obj, key, parent)?, &join(parent, key))
}

/// An optional non-negative integer field (absent or null is `None`).
pub fn opt_count(
    obj: &Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<u64>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_count(v, &join(parent, key)).map(Some),
    }
}

/// `v` as a finite, non-negative number.
pub fn as_nonneg_f64(v: &Value, path: &str) -> Result<f64, FieldError> {
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f),
        Some(f) => Err(FieldError::new(
            path,
            format!("must not be negative, got {f}"),
        )),
        None => Err(FieldError::new(
            path,
            format!("expected a number, got {}", type_name(v)),
        )),
    }
}

/// An optional non-negative number field (absent or null is `None`).
pub fn opt_nonneg_f64(
    obj: &Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<f64>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_nonneg_f64(v, &join(parent, key)).map(Some),
    }
}

/// Narrows a count to u32 (token lengths), naming the field when it is absurd.
pub fn to_u32(n: u64, path: &str) -> Result<u32, FieldError> {
    u32::try_from(n).map_err(|_| FieldError::new(path, format!("{n} is too large")))
}

/// `PathBuf` for errors built outside a source.
pub fn path_of(path: Option<&Path>) -> PathBuf {
    path.map_or_else(|| PathBuf::from("dataset"), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problems_list_at_most_twenty_and_name_file_line_field() {
        let mut p = Problems::new(Some(Path::new("d.jsonl")), false);
        for i in 0..25 {
            p.report(
                Loc::Line(i + 1),
                FieldError::new("turns[0].role", "unknown role \"bot\""),
            );
        }
        let msg = p.finish().unwrap_err().to_string();
        assert!(msg.starts_with("d.jsonl: 25 invalid entries"), "{msg}");
        assert!(
            msg.contains("d.jsonl: line 3, field `turns[0].role`: unknown role"),
            "{msg}"
        );
        assert!(msg.contains("… and 5 more"), "{msg}");
        assert_eq!(msg.lines().count(), 22);
    }

    #[test]
    fn skip_invalid_counts() {
        let mut p = Problems::new(None, true);
        p.report(Loc::Item(0), FieldError::new("", "empty"));
        assert_eq!(p.finish().unwrap(), 1);
    }

    #[test]
    fn jsonl_reports_bad_lines_by_number() {
        let mut p = Problems::new(None, true);
        let v = jsonl_values_of("{\"a\":1}\n\n{oops\n[2]\n", &mut p);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, Loc::Line(4));
        assert_eq!(p.listed()[0].loc, Loc::Line(3));
        assert!(p.listed()[0].error.reason.starts_with("invalid JSON"));
    }

    fn lines_of(bytes: &[u8], max: usize) -> (Vec<(usize, Vec<u8>)>, Option<usize>) {
        let mut lines = Lines::new(bytes, max);
        let mut out = Vec::new();
        loop {
            match lines.next_line() {
                Ok(Some((n, l))) => out.push((n, l.to_vec())),
                Ok(None) => return (out, None),
                Err(LineError::TooLong { line }) => return (out, Some(line)),
                Err(LineError::Io(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn lines_strip_a_bom_at_the_start_only_and_number_every_line() {
        let (l, err) = lines_of(b"\xEF\xBB\xBFa\r\n\n\xEF\xBB\xBFb\nc", 100);
        assert_eq!(err, None);
        let want: Vec<(usize, Vec<u8>)> = vec![
            (1, b"a\r".to_vec()),
            (2, b"".to_vec()),
            (3, b"\xEF\xBB\xBFb".to_vec()),
            (4, b"c".to_vec()),
        ];
        assert_eq!(l, want);
        assert_eq!(lines_of(b"", 10), (vec![], None));
    }

    #[test]
    fn a_line_at_the_limit_is_read_and_one_byte_more_is_not() {
        assert_eq!(lines_of(b"abcd\nxy", 4).1, None);
        // The newline does not count; the limit is per line, not per file.
        let (l, err) = lines_of(b"abcd\nabcde\nz", 4);
        assert_eq!((l.len(), err), (1, Some(2)));
        // A tiny buffer: the limit holds across refills.
        let r = std::io::BufReader::with_capacity(2, &b"abcdefgh"[..]);
        let mut lines = Lines::new(r, 5);
        assert!(matches!(
            lines.next_line(),
            Err(LineError::TooLong { line: 1 })
        ));
    }

    #[test]
    fn readers_name_empty_files_and_report_non_utf8_lines() {
        let path = Path::new("d.jsonl");
        let mut p = Problems::new(Some(path), true);
        let e = each_jsonl_in(&b" \n\r\n"[..], path, &mut p, |_, _, _| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.jsonl: the file is empty (no entries to read)"
        );
        let mut seen = Vec::new();
        each_jsonl_in(&b"[1]\n\xFF\n[3]\n"[..], path, &mut p, |loc, _, _| {
            seen.push(loc)
        })
        .unwrap();
        assert_eq!(seen, [Loc::Line(1), Loc::Line(3)]);
        assert_eq!(p.listed()[0].loc, Loc::Line(2));
        assert!(p.listed()[0].error.reason.starts_with("not UTF-8"));
        // read_text keeps the numbering: the bad line reads as blank.
        let mut p = Problems::new(Some(path), true);
        let text = read_text_in(&b"\xEF\xBB\xBFa\n\xC3\nc\n"[..], path, &mut p).unwrap();
        assert_eq!(text, "a\n\nc\n");
        assert_eq!(p.count(), 1);
        let mut p = Problems::new(Some(path), true).with_max_line_bytes(2);
        let e = read_text_in(&b"ab\nabc\n"[..], path, &mut p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.jsonl: line 2: longer than --max-line-bytes (2 bytes)"),
            "{e}"
        );
    }

    #[test]
    fn field_helpers_name_the_path() {
        let o = json!({"n": -3, "s": 5, "f": 2.5, "ok": 7.0});
        let o = o.as_object().unwrap();
        let e = req_count(o, "n", "turns[1]").unwrap_err();
        assert_eq!(e.field, "turns[1].n");
        assert!(e.reason.contains("negative"));
        assert_eq!(
            req_str(o, "s", "").unwrap_err().reason,
            "expected a string, got a number"
        );
        assert_eq!(req_count(o, "missing", "x").unwrap_err().field, "x.missing");
        assert!(req_count(o, "f", "").is_err());
        assert_eq!(req_count(o, "ok", "").unwrap(), 7);
        assert_eq!(opt_count(o, "none", "").unwrap(), None);
    }
}
