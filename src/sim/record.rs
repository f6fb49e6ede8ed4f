//! `--record FILE`: the sim's own account of every generation request, one JSON line each.
//!
//! Records are finished on the executors and handed to one writer thread over a bounded channel,
//! so formatting and file I/O stay off the request path. The writer flushes whenever the channel
//! goes quiet (so a test can read the file while the sim runs) and on shutdown.
//!
//! All times are [`crate::clock::now_ns`] values, directly comparable with the client's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::SimError;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `text`'s UTF-8 bytes: the hash the record uses for message contents and replies.
/// Tests recompute it to match a record against what the client sent and received.
pub fn content_hash(text: &str) -> u64 {
    fnv1a_update(FNV_OFFSET, text.as_bytes())
}

/// The FNV-1a 64 state before any byte (for hashing text that arrives in pieces).
pub(crate) const fn fnv1a_start() -> u64 {
    FNV_OFFSET
}

/// Continues an FNV-1a 64 hash with `bytes`.
#[inline]
pub(crate) fn fnv1a_update(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// How hashes appear in the record: 16 lowercase hex digits.
pub fn hash_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// One line of the record file.
///
/// Requests are those to `/v1/chat/completions` and `/v1/completions` (including rejected and
/// failed ones); `/health`, `/metrics` and `/v1/models` are not recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// 1-based arrival order over all executors (the count `--fail-every` uses).
    pub request_id: u64,
    /// `x-parley-conversation` header: a number when it parses as one, else the string.
    pub conversation: Option<serde_json::Value>,
    /// `x-parley-turn` header, the same way.
    pub turn: Option<serde_json::Value>,
    /// `"chat"` or `"completions"`.
    pub endpoint: String,
    /// HTTP status sent (0: none — a `stall_before_headers` or `reset_before_headers` fault).
    pub status: u16,
    pub stream: bool,
    /// When the request head had arrived (time of the socket read that completed it).
    pub arrival_ns: u64,
    /// When the body had been read: the start of the timing model.
    pub t0_ns: u64,
    /// When the first content chunk was sent (for a non-stream reply: when the reply was sent).
    pub first_token_ns: Option<u64>,
    /// When each content chunk was handed to the connection (non-stream: the one reply).
    pub chunk_ns: Vec<u64>,
    /// When the last byte was handed over (`[DONE]`), or the request ended otherwise.
    pub end_ns: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Output tokens sent (fewer than planned if the client went away).
    pub completion_tokens: u64,
    /// Output tokens planned.
    pub planned_tokens: u64,
    /// `max_completion_tokens`, else `max_tokens`, as requested.
    pub max_tokens: Option<u64>,
    pub min_tokens: Option<u64>,
    pub ignore_eos: bool,
    pub include_usage: bool,
    pub finish_reason: Option<String>,
    /// Number of messages (chat), 1 for a completions prompt.
    pub messages: u32,
    pub message_roles: Vec<String>,
    /// [`content_hash`] of each message's content (parts joined with `\n`), as [`hash_hex`].
    pub message_hashes: Vec<String>,
    /// Bare token count of each message's content (no chat template).
    pub message_tokens: Vec<u64>,
    /// [`content_hash`] of the reply text sent.
    pub reply_hash: Option<String>,
    /// The client disconnected before the reply was complete.
    pub aborted: bool,
    /// Failed on purpose with an error status (`--fail-every`, `--fault http_*`).
    pub failed: bool,
    /// The `--fault` kind this request got (`http_500`, `reset_mid_stream`, …), if any.
    #[serde(default)]
    pub fault: Option<String>,
    /// The whole reply was sent as a success (status 200, a normal end, [DONE] for a stream):
    /// not rejected, not cut short by the client or by a fault. A client's successes should
    /// equal these.
    #[serde(default)]
    pub completed: bool,
    /// Error message sent, for 4xx/5xx.
    pub error: Option<String>,
    /// Over https (`--tls-cert`): the TLS handshake of the request's connection, `"full"` or
    /// `"resumed"` (a session resumed from an earlier connection's ticket); absent over http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The prompt as tokenized (`--record-prompts` only): a completions text prompt as sent, or a
    /// chat request's messages rendered as ChatML with the generation prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
}

enum Msg {
    Record(Box<Record>),
    Stop,
}

/// The sending side, cloned into every executor.
#[derive(Clone)]
pub(crate) struct RecordSender {
    tx: Sender<Msg>,
}

impl RecordSender {
    /// Queues a finished record. Blocks only if the writer is a whole channel (64 Ki records)
    /// behind, i.e. the disk has stalled; dropping records silently would be worse for a fixture.
    pub(crate) fn send(&self, record: Box<Record>) {
        // A send error means the writer is gone (shutdown, or it failed and reported why).
        let _ = self.tx.send(Msg::Record(record));
    }
}

/// The writer thread.
pub(crate) struct RecordWriter {
    tx: Sender<Msg>,
    thread: JoinHandle<std::io::Result<u64>>,
    path: PathBuf,
}

const CHANNEL_BOUND: usize = 1 << 16;
const IDLE_FLUSH: Duration = Duration::from_millis(50);

impl RecordWriter {
    /// Creates (truncates) `path` and starts the writer.
    pub(crate) fn start(path: &Path) -> Result<(RecordWriter, RecordSender), SimError> {
        let file = File::create(path).map_err(|source| SimError::Record {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = channel::bounded(CHANNEL_BOUND);
        let thread = std::thread::Builder::new()
            .name("parley-sim-record".into())
            .spawn(move || write_loop(rx, BufWriter::with_capacity(256 * 1024, file)))
            .map_err(|source| SimError::Record {
                path: path.to_path_buf(),
                source,
            })?;
        Ok((
            RecordWriter {
                tx: tx.clone(),
                thread,
                path: path.to_path_buf(),
            },
            RecordSender { tx },
        ))
    }

    /// Writes everything queued so far, flushes and stops. Returns the number of records written.
    pub(crate) fn finish(self) -> Result<u64, SimError> {
        let _ = self.tx.send(Msg::Stop);
        let path = self.path;
        match self.thread.join() {
            Ok(r) => r.map_err(|source| SimError::Record { path, source }),
            Err(_) => Err(SimError::Record {
                path,
                source: std::io::Error::other("record writer thread panicked"),
            }),
        }
    }
}

fn write_loop(rx: Receiver<Msg>, mut out: BufWriter<File>) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut dirty = false;
    loop {
        match rx.recv_timeout(IDLE_FLUSH) {
            Ok(Msg::Record(r)) => {
                serde_json::to_writer(&mut out, &*r).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
                written += 1;
                dirty = true;
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if dirty {
                    out.flush()?;
                    dirty = false;
                }
            }
        }
    }
    // Records queued behind the stop message (none in an orderly shutdown) are still written.
    while let Ok(Msg::Record(r)) = rx.try_recv() {
        serde_json::to_writer(&mut out, &*r).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        // Reference values of FNV-1a 64.
        assert_eq!(content_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_hash("foobar"), 0x8594_4171_f739_67e8);
        let h = fnv1a_update(fnv1a_update(fnv1a_start(), b"foo"), b"bar");
        assert_eq!(h, content_hash("foobar"));
        assert_eq!(hash_hex(0xab), "00000000000000ab");
    }

    #[test]
    fn writer_writes_lines_and_flushes_on_finish() {
        let dir = std::env::temp_dir().join(format!("parley-sim-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.jsonl");
        let (w, tx) = RecordWriter::start(&path).unwrap();
        for i in 1..=3 {
            tx.send(Box::new(Record {
                request_id: i,
                endpoint: "chat".into(),
                ..Record::default()
            }));
        }
        assert_eq!(w.finish().unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().request_id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
