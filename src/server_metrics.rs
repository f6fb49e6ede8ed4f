//! `--server-metrics`: the server's own Prometheus counters, scraped before, during and after a
//! run, and set beside the client's figures (`summary.json` `server_metrics`, the console's
//! "Server metrics" table; every field is defined in `docs/metrics.md`).
//!
//! Scraping runs on one plain thread with a tiny blocking HTTP/1.1 GET (over rustls's blocking
//! stream for an https URL), off the executors: the engine's cores never see it. A target without `/metrics` (refused, 404, timeout, not the
//! text format) becomes a note in the report, never a failure.
//!
//! The text-format parser is ours (about 100 lines, unit-tested on vLLM and SGLang exposition):
//! the Rust crates for it either reject the `:` that every vLLM and SGLang metric name carries
//! (prometheus-parse matches names with `\w+`), are LGPL-3.0 (openmetrics-parser), or have a
//! single early release and few users.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tls::TlsTarget;

/// How often the server is scraped during a run.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);

/// Connect, write and read limit of one scrape: a server that does not answer in this time is
/// noted and the run goes on.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest `/metrics` body read (a vLLM's is tens of kB).
const MAX_BODY_BYTES: usize = 16 << 20;

/// Most points a source's timeline keeps; beyond it every other point is dropped, so memory
/// stays bounded however long the run.
const MAX_TIMELINE_POINTS: usize = 2_000;

// ---------------------------------------------------------------------------------------------
// Parsing

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// Parses the Prometheus text exposition format (0.0.4): `#` lines (HELP, TYPE, comments) are
/// skipped, every other non-blank line must be a sample. Names may contain `:` (vLLM's
/// `vllm:…`, SGLang's `sglang:…`); label values may hold escaped `\\`, `\"` and `\n`; values
/// may be `NaN`, `+Inf`, `-Inf` or any float (`8.128902e+06`).
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_sample(line).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?);
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{line}` does not start with a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("`{line}` has no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    // An optional timestamp (ms) may follow; nothing else may.
    if let Some(ts) = fields.next() {
        if ts.parse::<i64>().is_err() || fields.next().is_some() {
            return Err(format!("`{line}` has text after its value"));
        }
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A sample's labels, `(name, value)` in their order.
type Labels = Vec<(String, String)>;

/// Labels after the `{`, up to and including the `}`; returns them and the text after.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{name}` is not a label name"));
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without its opening quote")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("a label value without its closing quote".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("a label value ends in `\\`".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// The counters parley reads

/// Which server's names a scrape carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    Vllm,
    Sglang,
}

/// The counters parley reads from one scrape, each summed over its label sets (engines, models,
/// cache sources); `None` when the server does not expose it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub flavor: Option<Flavor>,
    pub prompt_tokens: Option<f64>,
    pub generation_tokens: Option<f64>,
    /// Prompt tokens looked up in the prefix cache (vLLM `prefix_cache_queries`; SGLang counts
    /// every prompt token, so its `prompt_tokens`).
    pub cache_queries: Option<f64>,
    /// Of those, tokens found (vLLM `prefix_cache_hits`, SGLang `cached_tokens`).
    pub cache_hits: Option<f64>,
    /// SGLang's own `cache_hit_rate` gauge (its recent batches), averaged over label sets.
    pub cache_hit_rate_gauge: Option<f64>,
}

impl Counters {
    pub fn of(samples: &[Sample]) -> Counters {
        // The sum of every sample named `name` (or the first of `names` that is present).
        let sum = |names: &[&str]| {
            names.iter().find_map(|n| {
                let mut found = false;
                let total: f64 = samples
                    .iter()
                    .filter(|s| s.name == *n)
                    .inspect(|_| found = true)
                    .map(|s| s.value)
                    .sum();
                found.then_some(total)
            })
        };
        let vllm_prompt = sum(&["vllm:prompt_tokens_total", "vllm:prompt_tokens"]);
        let sglang_prompt = sum(&["sglang:prompt_tokens_total", "sglang:prompt_tokens"]);
        let gauge: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == "sglang:cache_hit_rate" && s.value.is_finite())
            .map(|s| s.value)
            .collect();
        let gauge = (!gauge.is_empty()).then(|| gauge.iter().sum::<f64>() / gauge.len() as f64);
        let any = |prefix: &str| samples.iter().any(|s| s.name.starts_with(prefix));
        if vllm_prompt.is_some() || (any("vllm:") && !any("sglang:")) {
            Counters {
                flavor: Some(Flavor::Vllm),
                prompt_tokens: vllm_prompt,
                generation_tokens: sum(&["vllm:generation_tokens_total", "vllm:generation_tokens"]),
                // V1 names first, then the older `gpu_` spelling (vLLM 0.8–0.9).
                cache_queries: sum(&[
                    "vllm:prefix_cache_queries_total",
                    "vllm:prefix_cache_queries",
                    "vllm:gpu_prefix_cache_queries_total",
                    "vllm:gpu_prefix_cache_queries",
                ]),
                cache_hits: sum(&[
                    "vllm:prefix_cache_hits_total",
                    "vllm:prefix_cache_hits",
                    "vllm:gpu_prefix_cache_hits_total",
                    "vllm:gpu_prefix_cache_hits",
                ]),
                cache_hit_rate_gauge: None,
            }
        } else if sglang_prompt.is_some() || any("sglang:") {
            let hits = sum(&["sglang:cached_tokens_total", "sglang:cached_tokens"]);
            Counters {
                flavor: Some(Flavor::Sglang),
                prompt_tokens: sglang_prompt,
                generation_tokens: sum(&[
                    "sglang:generation_tokens_total",
                    "sglang:generation_tokens",
                ]),
                cache_queries: hits.and(sglang_prompt),
                cache_hits: hits,
                cache_hit_rate_gauge: gauge,
            }
        } else {
            Counters::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scraping

/// One `/metrics` endpoint to scrape.
#[derive(Clone, Debug)]
pub struct Source {
    /// As reports show it (credentials masked).
    pub url: String,
    /// Resolved address, or why it could not be resolved (then the source is only a note).
    pub addr: Result<SocketAddr, String>,
    /// `Host` header value.
    pub host: String,
    pub path: String,
    /// An https URL's TLS settings (the run's `--ca-cert` / `--insecure`).
    pub tls: Option<TlsTarget>,
}

/// A parsed `--server-metrics` URL.
#[derive(Debug, PartialEq)]
pub struct MetricsUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `https://`.
    pub tls: bool,
}

/// A `--server-metrics` URL: `http[s]://host[:port][/path]` or `host:port[/path]`; the path
/// defaults to `/metrics`, the port to 80 (443 for https).
pub fn parse_url(url: &str) -> Result<MetricsUrl, String> {
    let (rest, tls) = match url.split_once("://") {
        Some(("http", rest)) => (rest, false),
        Some(("https", rest)) => (rest, true),
        Some((scheme, _)) => {
            return Err(format!("{scheme}:// is not supported; use http or https"))
        }
        None => (url, false),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (
            &authority[..i],
            authority[i + 1..]
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("port `{}` is not 1-65535", &authority[i + 1..]))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    let path = if path.is_empty() || path == "/" {
        "/metrics".to_string()
    } else {
        path.to_string()
    };
    Ok(MetricsUrl {
        host: host.to_string(),
        port,
        path,
        tls,
    })
}

impl Source {
    /// A source from a `--server-metrics` URL, the host resolved here (an unresolvable one
    /// becomes a note, as a refused connection does). `tls`: the run's TLS client, for an
    /// https URL (the plan made sure there is one then).
    pub fn from_url(url: &str, tls: Option<&std::sync::Arc<crate::tls::TlsClient>>) -> Source {
        let shown = crate::plan::redact_url(url);
        let parsed = parse_url(url).and_then(|u| {
            let tls = match (u.tls, tls) {
                (false, _) => None,
                (true, Some(client)) => Some(TlsTarget::new(client.clone(), &u.host)?),
                (true, None) => return Err("https, but no TLS settings".to_string()),
            };
            Ok((u, tls))
        });
        match parsed {
            Ok((u, tls)) => Source {
                url: shown,
                addr: (u.host.as_str(), u.port)
                    .to_socket_addrs()
                    .map_err(|e| e.to_string())
                    .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string())),
                host: if u.port == if u.tls { 443 } else { 80 } {
                    u.host
                } else if u.host.contains(':') {
                    format!("[{}]:{}", u.host, u.port)
                } else {
                    format!("{}:{}", u.host, u.port)
                },
                path: u.path,
                tls,
            },
            Err(e) => Source {
                url: shown,
                addr: Err(e),
                host: String::new(),
                path: String::new(),
                tls: None,
            },
        }
    }

    /// The target's own `/metrics` at `addr` (`host`: the `Host` header the requests carry;
    /// `tls`: the target's, for an https target).
    pub fn default_for(addr: SocketAddr, host: &str, tls: Option<TlsTarget>) -> Source {
        let scheme = if tls.is_some() { "https" } else { "http" };
        Source {
            url: format!("{scheme}://{host}/metrics"),
            addr: Ok(addr),
            host: host.to_string(),
            path: "/metrics".into(),
            tls,
        }
    }
}

/// Why a scrape gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Http(String),
    #[error("not the Prometheus text format ({0})")]
    Parse(#[from] ParseError),
}

/// One blocking `GET path` with `Connection: close`, over TLS with `tls`: the status must be
/// 200; the body is read whole (by `Content-Length`, chunked, or to the close).
pub fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    tls: Option<&TlsTarget>,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match tls {
        None => exchange(stream, host, path, timeout),
        Some(t) => exchange(crate::tls::blocking(stream, t)?, host, path, timeout),
    }
}

/// [`get`]'s request and response over an open stream.
fn exchange(
    mut stream: impl Read + Write,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nUser-Agent: parley\r\nConnection: close\r\n\r\n"
    )?;
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(ScrapeError::Http("timed out reading the response".into()));
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify: the end of the body all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        if raw.len() > MAX_BODY_BYTES {
            return Err(ScrapeError::Http(format!(
                "response larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        if let Some(body) = complete_body(&raw)? {
            return Ok(body);
        }
    }
    complete_body(&raw)?
        .or_else(|| {
            // Closed without a length: the body is what came.
            let head_end = find(&raw, b"\r\n\r\n")?;
            Some(String::from_utf8_lossy(&raw[head_end + 4..]).into_owned())
        })
        .ok_or_else(|| ScrapeError::Http("the connection closed before the headers".into()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body once `raw` holds the whole response (`None`: read on); an error status is an error.
fn complete_body(raw: &[u8]) -> Result<Option<String>, ScrapeError> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ScrapeError::Http("not an HTTP response".into()))?;
    if status != 200 {
        return Err(ScrapeError::Status(status));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body = &raw[head_end + 4..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok(dechunk(body).map(|b| String::from_utf8_lossy(&b).into_owned()));
    }
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return Ok((body.len() >= len).then(|| String::from_utf8_lossy(&body[..len]).into_owned()));
    }
    Ok(None)
}

/// A chunked body decoded, once its last chunk has arrived.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// One scrape of `source`: its counters.
pub fn scrape(source: &Source) -> Result<Counters, ScrapeError> {
    let addr = source
        .addr
        .as_ref()
        .map_err(|e| ScrapeError::Http(e.clone()))?;
    let text = get(
        *addr,
        &source.host,
        &source.path,
        source.tls.as_ref(),
        SCRAPE_TIMEOUT,
    )?;
    Ok(Counters::of(&parse(&text)?))
}

/// A source's scrapes over one run.
#[derive(Clone, Debug)]
pub struct Series {
    pub url: String,
    /// The scrape before the run; `None` when it failed (then nothing else was tried).
    pub before: Option<Counters>,
    /// The last successful scrape (the one after the run, unless that failed).
    pub after: Option<Counters>,
    /// Seconds from the scrape before the run to `after`.
    pub after_s: f64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Counters every [`SCRAPE_INTERVAL`], as deltas from `before`.
    pub timeline: Vec<TimelinePoint>,
    /// What went wrong, for the report.
    pub notes: Vec<String>,
}

/// The scraping thread of one run: [`Scraper::start`] scrapes every source once (before the
/// run) and starts the thread; [`Scraper::finish`] scrapes once more (after) and returns the
/// series.
pub struct Scraper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Vec<Series>>>,
}

impl Scraper {
    pub fn start(sources: Vec<Source>, interval: Duration) -> Scraper {
        let started = Instant::now();
        let mut series: Vec<(Source, Series)> = sources
            .into_iter()
            .map(|source| {
                let mut s = Series {
                    url: source.url.clone(),
                    before: None,
                    after: None,
                    after_s: 0.0,
                    scrapes_ok: 0,
                    scrapes_failed: 0,
                    timeline: Vec::new(),
                    notes: Vec::new(),
                };
                match scrape(&source) {
                    Ok(c) => {
                        s.scrapes_ok = 1;
                        if c.flavor.is_none() {
                            s.notes.push(format!(
                                "{}: no vLLM or SGLang token counters in the scrape",
                                s.url
                            ));
                        }
                        s.before = Some(c);
                        s.after = Some(c);
                    }
                    Err(e) => {
                        s.scrapes_failed = 1;
                        s.notes
                            .push(format!("{}: no server metrics ({e})", source.url));
                    }
                }
                (source, s)
            })
            .collect();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("parley-metrics".into())
            .spawn(move || loop {
                let last = matches!(
                    stopped.recv_timeout(interval),
                    Ok(()) | Err(RecvTimeoutError::Disconnected)
                );
                for (source, s) in series.iter_mut().filter(|(_, s)| s.before.is_some()) {
                    let at_s = started.elapsed().as_secs_f64();
                    match scrape(source) {
                        Ok(c) => {
                            s.scrapes_ok += 1;
                            s.after = Some(c);
                            s.after_s = at_s;
                            if !last {
                                let point = TimelinePoint::of(at_s, s);
                                push_point(&mut s.timeline, point);
                            }
                        }
                        Err(e) => {
                            s.scrapes_failed += 1;
                            if last {
                                s.notes.push(format!(
                                    "{}: the scrape after the run failed ({e}); deltas end \
                                         at the last good scrape, {:.1} s in",
                                    s.url, s.after_s
                                ));
                            }
                        }
                    }
                }
                if last {
                    return series.into_iter().map(|(_, s)| s).collect();
                }
            })
            .ok();
        Scraper {
            stop: Some(stop),
            thread,
        }
    }

    /// Scrapes once more and returns every source's series.
    pub fn finish(mut self) -> Vec<Series> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        // Dropping the sender ends the thread at its next wake-up; nothing waits for it.
        self.stop.take();
    }
}

fn push_point(timeline: &mut Vec<TimelinePoint>, p: TimelinePoint) {
    if timeline.len() >= MAX_TIMELINE_POINTS {
        // Keep every other point: half the resolution, the whole run still covered.
        let mut i = 0;
        timeline.retain(|_| {
            i += 1;
            i % 2 == 0
        });
    }
    timeline.push(p);
}

/// Counters at one scrape during the run, as deltas from the scrape before it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the scrape before the run.
    pub t_s: f64,
    pub prompt_tokens: Option<u64>,
    pub generation_tokens: Option<u64>,
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
}

impl TimelinePoint {
    fn of(t_s: f64, s: &Series) -> TimelinePoint {
        let d = Deltas::of(s.before.as_ref(), s.after.as_ref());
        TimelinePoint {
            t_s,
            prompt_tokens: d.prompt_tokens,
            generation_tokens: d.generation_tokens,
            prefix_cache_queries: d.cache_queries,
            prefix_cache_hits: d.cache_hits,
        }
    }
}

/// after − before of each counter; `None` when either lacks it or it went down (a restart).
#[derive(Clone, Copy, Debug, Default)]
struct Deltas {
    prompt_tokens: Option<u64>,
    generation_tokens: Option<u64>,
    cache_queries: Option<u64>,
    cache_hits: Option<u64>,
    reset: bool,
}

impl Deltas {
    fn of(before: Option<&Counters>, after: Option<&Counters>) -> Deltas {
        let (Some(b), Some(a)) = (before, after) else {
            return Deltas::default();
        };
        let mut reset = false;
        let mut d = |f: fn(&Counters) -> Option<f64>| match (f(b), f(a)) {
            (Some(x), Some(y)) if y >= x => Some((y - x).round() as u64),
            (Some(_), Some(_)) => {
                reset = true;
                None
            }
            _ => None,
        };
        Deltas {
            prompt_tokens: d(|c| c.prompt_tokens),
            generation_tokens: d(|c| c.generation_tokens),
            cache_queries: d(|c| c.cache_queries),
            cache_hits: d(|c| c.cache_hits),
            reset,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// `summary.json`'s `server_metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerMetrics {
    pub interval_s: f64,
    /// Per scraped endpoint.
    pub endpoints: Vec<EndpointMetrics>,
    /// Sums over the endpoints that gave each counter.
    pub server: Totals,
    /// The client's figures over the same run (successful measured requests).
    pub client: ClientTotals,
    /// server − client (`null` when the server gave no such counter).
    pub difference: Difference,
    /// A warmup ran between the first scrape and the measured phase: the server's deltas
    /// include its requests, the client's figures do not.
    pub includes_warmup: bool,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointMetrics {
    pub url: String,
    /// `vllm`, `sglang`, or `null` (no scrape, or neither's names).
    pub flavor: Option<Flavor>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Seconds from the first scrape to the last good one.
    pub span_s: f64,
    pub prompt_tokens: Option<u64>,
    pub generation_tokens: Option<u64>,
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
    pub prefix_cache_hit_rate: Option<f64>,
    /// SGLang's `cache_hit_rate` gauge at the last scrape.
    pub cache_hit_rate_gauge: Option<f64>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Totals {
    pub prompt_tokens: Option<u64>,
    pub generation_tokens: Option<u64>,
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
    pub prefix_cache_hit_rate: Option<f64>,
}

/// The client's token figures a server's counters are compared with.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClientTotals {
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// `cache_hit_rate` of the summary.
    pub cache_hit_rate: Option<f64>,
}

impl ClientTotals {
    pub fn of(rec: &crate::metrics::Recorder) -> ClientTotals {
        ClientTotals {
            prompt_tokens: rec.input_tokens.sum as u64,
            output_tokens: rec.output_tokens.sum as u64,
            cached_tokens: rec.cache_cached_tokens,
            cache_hit_rate: (rec.cache_prompt_tokens > 0)
                .then(|| rec.cache_cached_tokens as f64 / rec.cache_prompt_tokens as f64),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Difference {
    pub prompt_tokens: Option<i64>,
    pub generation_tokens: Option<i64>,
    /// Server − client hit rate, as a fraction (0.01 = one percentage point).
    pub prefix_cache_hit_rate: Option<f64>,
}

fn rate(hits: Option<u64>, queries: Option<u64>) -> Option<f64> {
    match (hits, queries) {
        (Some(h), Some(q)) if q > 0 => Some(h as f64 / q as f64),
        _ => None,
    }
}

impl ServerMetrics {
    pub fn of(series: Vec<Series>, client: ClientTotals, includes_warmup: bool) -> ServerMetrics {
        let mut notes: Vec<String> = Vec::new();
        let endpoints: Vec<EndpointMetrics> = series
            .into_iter()
            .map(|s| {
                notes.extend(s.notes.iter().cloned());
                let d = Deltas::of(s.before.as_ref(), s.after.as_ref());
                if d.reset {
                    notes.push(format!(
                        "{}: a counter went down during the run (a server restart?); its delta \
                         is left out",
                        s.url
                    ));
                }
                EndpointMetrics {
                    url: s.url,
                    flavor: s.after.and_then(|c| c.flavor),
                    scrapes_ok: s.scrapes_ok,
                    scrapes_failed: s.scrapes_failed,
                    span_s: s.after_s,
                    prompt_tokens: d.prompt_tokens,
                    generation_tokens: d.generation_tokens,
                    prefix_cache_queries: d.cache_queries,
                    prefix_cache_hits: d.cache_hits,
                    prefix_cache_hit_rate: rate(d.cache_hits, d.cache_queries),
                    cache_hit_rate_gauge: s.after.and_then(|c| c.cache_hit_rate_gauge),
                    timeline: s.timeline,
                }
            })
            .collect();
        let total = |f: fn(&EndpointMetrics) -> Option<u64>| {
            endpoints
                .iter()
                .filter_map(f)
                .fold(None, |acc: Option<u64>, v| Some(acc.unwrap_or(0) + v))
        };
        let queries = total(|e| e.prefix_cache_queries);
        let hits = total(|e| e.prefix_cache_hits);
        let server = Totals {
            prompt_tokens: total(|e| e.prompt_tokens),
            generation_tokens: total(|e| e.generation_tokens),
            prefix_cache_queries: queries,
            prefix_cache_hits: hits,
            prefix_cache_hit_rate: rate(hits, queries),
        };
        let diff = |s: Option<u64>, c: u64| s.map(|s| s as i64 - c as i64);
        let difference = Difference {
            prompt_tokens: diff(server.prompt_tokens, client.prompt_tokens),
            generation_tokens: diff(server.generation_tokens, client.output_tokens),
            prefix_cache_hit_rate: match (server.prefix_cache_hit_rate, client.cache_hit_rate) {
                (Some(s), Some(c)) => Some(s - c),
                _ => None,
            },
        };
        if includes_warmup {
            notes.push(
                "the server's deltas include the warmup's requests; the client's figures do not"
                    .into(),
            );
        }
        ServerMetrics {
            interval_s: SCRAPE_INTERVAL.as_secs_f64(),
            endpoints,
            server,
            client,
            difference,
            includes_warmup,
            notes,
        }
    }

    /// The console's "Server metrics" table and notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let urls: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                let flavor = match e.flavor {
                    Some(Flavor::Vllm) => "vLLM",
                    Some(Flavor::Sglang) => "SGLang",
                    None => "-",
                };
                format!("{} ({flavor}, {} scrapes)", e.url, e.scrapes_ok)
            })
            .collect();
        out.push_str(&format!("Server Metrics: {}\n", urls.join(", ")));
        let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let signed = |v: Option<i64>| v.map_or("-".into(), |v| format!("{v:+}"));
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let s = &self.server;
        let c = &self.client;
        let rows = vec![
            vec![
                "Prompt tokens".into(),
                n(s.prompt_tokens),
                c.prompt_tokens.to_string(),
                signed(self.difference.prompt_tokens),
            ],
            vec![
                "Generation tokens".into(),
                n(s.generation_tokens),
                c.output_tokens.to_string(),
                signed(self.difference.generation_tokens),
            ],
            vec![
                "Prefix cache hit".into(),
                pct(s.prefix_cache_hit_rate),
                pct(c.cache_hit_rate),
                self.difference
                    .prefix_cache_hit_rate
                    .map_or("-".into(), |v| format!("{:+.1} pp", v * 100.0)),
            ],
        ];
        out.push_str(&crate::report::table(
            &["Figure", "Server", "Client", "Server − client"],
            &rows,
        ));
        for e in &self.endpoints {
            if let Some(g) = e.cache_hit_rate_gauge {
                out.push_str(&format!(
                    "  {}: sglang:cache_hit_rate gauge at the end {:.1}%\n",
                    e.url,
                    g * 100.0
                ));
            }
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vLLM V1 (0.10) exposition, as `curl :8000/metrics` prints it (abridged: two engines).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-8B"} 2.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen3-8B"} 1.2e+06
vllm:prefix_cache_queries_total{engine="1",model_name="Qwen/Qwen3-8B"} 800000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-8B"} 900000.0
vllm:prefix_cache_hits_total{engine="1",model_name="Qwen/Qwen3-8B"} 600000.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 1.2e+06
vllm:prompt_tokens_total{engine="1",model_name="Qwen/Qwen3-8B"} 800000.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="Qwen/Qwen3-8B"} 1.7386e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 51234.0
vllm:generation_tokens_total{engine="1",model_name="Qwen/Qwen3-8B"} 48766.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-8B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-8B"} 250.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen3-8B"} 12.5
"#;

    /// vLLM 0.8-0.9 V1 spelling of the prefix cache counters.
    const VLLM_GPU: &str = r#"# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 1000.0
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 250.0
vllm:prompt_tokens_total{model_name="m"} 1000.0
vllm:generation_tokens_total{model_name="m"} 10.0
"#;

    /// SGLang's /metrics as its production_metrics docs show it, with the per-source cached
    /// token counter of newer versions.
    const SGLANG: &str = r#"# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.557572e+06
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{cache_source="device",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0e+06
sglang:cached_tokens_total{cache_source="host",model_name="meta-llama/Llama-3.1-8B-Instruct"} 64902.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
"#;

    #[test]
    fn parses_vllm_exposition_summing_engines() {
        let samples = parse(VLLM).unwrap();
        assert_eq!(samples.len(), 14);
        assert_eq!(samples[0].name, "vllm:num_requests_running");
        assert_eq!(
            samples[0].labels,
            vec![
                ("engine".to_string(), "0".to_string()),
                ("model_name".to_string(), "Qwen/Qwen3-8B".to_string())
            ]
        );
        let inf = samples
            .iter()
            .find(|s| s.labels.iter().any(|(k, v)| k == "le" && v == "+Inf"))
            .unwrap();
        assert_eq!(inf.value, 250.0);
        let c = Counters::of(&samples);
        assert_eq!(c.flavor, Some(Flavor::Vllm));
        assert_eq!(c.prompt_tokens, Some(2_000_000.0));
        assert_eq!(c.generation_tokens, Some(100_000.0));
        assert_eq!(c.cache_queries, Some(2_000_000.0));
        assert_eq!(c.cache_hits, Some(1_500_000.0));
        assert_eq!(c.cache_hit_rate_gauge, None);
    }

    #[test]
    fn reads_vllm_older_gpu_prefix_cache_names() {
        let c = Counters::of(&parse(VLLM_GPU).unwrap());
        assert_eq!(c.cache_queries, Some(1000.0));
        assert_eq!(c.cache_hits, Some(250.0));
    }

    #[test]
    fn parses_sglang_exposition() {
        let c = Counters::of(&parse(SGLANG).unwrap());
        assert_eq!(c.flavor, Some(Flavor::Sglang));
        assert_eq!(c.prompt_tokens, Some(8_128_902.0));
        assert_eq!(c.generation_tokens, Some(7_557_572.0));
        // Cached tokens summed over cache sources; the denominator is every prompt token.
        assert_eq!(c.cache_hits, Some(4_064_902.0));
        assert_eq!(c.cache_queries, Some(8_128_902.0));
        assert_eq!(c.cache_hit_rate_gauge, Some(0.007507552643049313));
    }

    #[test]
    fn sglang_without_cached_counter_has_only_the_gauge() {
        let text = "sglang:prompt_tokens_total{model_name=\"m\"} 7.0\n\
                    sglang:cache_hit_rate{model_name=\"m\"} 0.5\n";
        let c = Counters::of(&parse(text).unwrap());
        assert_eq!((c.cache_hits, c.cache_queries), (None, None));
        assert_eq!(c.cache_hit_rate_gauge, Some(0.5));
    }

    #[test]
    fn label_escapes_timestamps_and_special_values() {
        let text = "a:b_total{path=\"C:\\\\x\",msg=\"say \\\"hi\\\"\\n\"} 3 1700000000000\n\
                    up NaN\n\
                    down -Inf\n\
                    empty{} 1\n";
        let s = parse(text).unwrap();
        assert_eq!(s[0].name, "a:b_total");
        assert_eq!(s[0].labels[0].1, "C:\\x");
        assert_eq!(s[0].labels[1].1, "say \"hi\"\n");
        assert_eq!(s[0].value, 3.0);
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert!(s[3].labels.is_empty());
    }

    #[test]
    fn rejects_what_is_not_the_text_format() {
        for (text, line) in [
            ("<html><body>404</body></html>", 1),
            ("ok 1\nvllm:x{a=\"1\" 2\n", 2),
            ("x{a=b} 1", 1),
            ("x 1 2 3", 1),
            ("x notanumber", 1),
            ("{a=\"1\"} 2", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
        }
    }

    #[test]
    fn parses_urls() {
        let url = |host: &str, port, path: &str, tls| MetricsUrl {
            host: host.into(),
            port,
            path: path.into(),
            tls,
        };
        assert_eq!(
            parse_url("http://127.0.0.1:8000").unwrap(),
            url("127.0.0.1", 8000, "/metrics", false)
        );
        assert_eq!(
            parse_url("localhost:9400/custom").unwrap(),
            url("localhost", 9400, "/custom", false)
        );
        assert_eq!(
            parse_url("http://u:p@[::1]:30000/metrics").unwrap(),
            url("::1", 30000, "/metrics", false)
        );
        assert_eq!(
            parse_url("https://x/metrics").unwrap(),
            url("x", 443, "/metrics", true)
        );
        assert!(parse_url("ftp://x/metrics").is_err());
        assert!(parse_url("http://x:0/metrics").is_err());
        assert!(parse_url("http://:80").is_err());
    }

    #[test]
    fn chunked_and_sized_bodies() {
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(complete_body(sized).unwrap().as_deref(), Some("hello"));
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello";
        assert_eq!(complete_body(partial).unwrap(), None);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(complete_body(chunked).unwrap().as_deref(), Some("abcde"));
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            complete_body(missing),
            Err(ScrapeError::Status(404))
        ));
    }

    #[test]
    fn deltas_rates_and_differences() {
        let before = Counters::of(&parse(VLLM_GPU).unwrap());
        let mut after = before;
        after.prompt_tokens = Some(1600.0);
        after.generation_tokens = Some(60.0);
        after.cache_queries = Some(1600.0);
        after.cache_hits = Some(700.0);
        let series = Series {
            url: "http://s/metrics".into(),
            before: Some(before),
            after: Some(after),
            after_s: 4.0,
            scrapes_ok: 3,
            scrapes_failed: 0,
            timeline: Vec::new(),
            notes: Vec::new(),
        };
        let client = ClientTotals {
            prompt_tokens: 590,
            output_tokens: 50,
            cached_tokens: 440,
            cache_hit_rate: Some(0.7),
        };
        let m = ServerMetrics::of(vec![series], client, false);
        assert_eq!(m.server.prompt_tokens, Some(600));
        assert_eq!(m.server.generation_tokens, Some(50));
        assert_eq!(m.server.prefix_cache_hits, Some(450));
        assert_eq!(m.server.prefix_cache_hit_rate, Some(0.75));
        assert_eq!(m.difference.prompt_tokens, Some(10));
        assert_eq!(m.difference.generation_tokens, Some(0));
        assert!((m.difference.prefix_cache_hit_rate.unwrap() - 0.05).abs() < 1e-12);
        let text = m.render();
        assert!(text.contains("+10"), "{text}");
        assert!(text.contains("+5.0 pp"), "{text}");
        // A counter that went down (restart) has no delta and a note.
        let mut down = after;
        down.prompt_tokens = Some(5.0);
        let series = Series {
            url: "u".into(),
            before: Some(before),
            after: Some(down),
            after_s: 1.0,
            scrapes_ok: 2,
            scrapes_failed: 0,
            timeline: Vec::new(),
            notes: Vec::new(),
        };
        let m = ServerMetrics::of(vec![series], client, true);
        assert_eq!(m.server.prompt_tokens, None);
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
    }

    #[test]
    fn timeline_stays_bounded() {
        let mut t = Vec::new();
        for i in 0..(MAX_TIMELINE_POINTS * 3) {
            push_point(
                &mut t,
                TimelinePoint {
                    t_s: i as f64,
                    prompt_tokens: None,
                    generation_tokens: None,
                    prefix_cache_queries: None,
                    prefix_cache_hits: None,
                },
            );
        }
        assert!(t.len() <= MAX_TIMELINE_POINTS);
        assert_eq!(t.last().unwrap().t_s, (MAX_TIMELINE_POINTS * 3 - 1) as f64);
        assert!(t.windows(2).all(|w| w[0].t_s < w[1].t_s));
    }
}
