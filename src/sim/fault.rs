//! `--fault KIND[:every=N][:after=MS]`: failures the sim injects on purpose, so every way a real
//! server breaks can be tested against the client (tests/faults.rs).
//!
//! Request k (the 1-based arrival count over all executors, as in the record) gets the first
//! fault in flag order whose `every` divides k; `close_idle` is not per request but applies to
//! every connection. The record names each request's fault (`fault`) and says whether its reply
//! was completed (`completed`).

use std::fmt;

/// Every fault the sim can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// HTTP 500 with an error body, before any stream (what `--fail-every` does).
    Http500,
    /// HTTP 429 with `Retry-After: ceil(after/1000)` seconds (default 1).
    Http429,
    /// HTTP 503 with an error body.
    Http503,
    /// The request is read, then the connection is reset (RST) before any response byte.
    ResetBeforeHeaders,
    /// Half the reply is streamed, then the connection is reset (RST).
    ResetMidStream,
    /// Half the reply is streamed, then the connection is closed (FIN) without the chunked
    /// body's last chunk.
    TruncatedChunkedBody,
    /// Half the reply is streamed, then an event that is not valid JSON; the stream goes on.
    MalformedJsonEvent,
    /// Half the reply is streamed, then `data: {"error":{…}}` and `[DONE]` (vLLM's in-band
    /// error).
    InBandErrorEvent,
    /// Half the reply is streamed, then a chunk with `finish_reason: "abort"`, the usage chunk
    /// (if asked for) and `[DONE]`, as vLLM ends the streams it aborts.
    AbortMidStream,
    /// The request is read and never answered (no headers, no bytes).
    StallBeforeHeaders,
    /// Half the reply is streamed, then nothing more is ever sent.
    StallMidStream,
    /// Headers, then a `: ping` comment every `after` ms (default 100) forever, no data.
    PingForever,
    /// The response headers go out `after` ms late (default 500); the reply is then normal.
    SlowHeaders,
    /// The reply is complete, but the connection is then dropped unanswered (RST) as soon as the
    /// client sends its next request on it: a server's keep-alive close crossing the client's
    /// next request. That request is never processed, so it is not in the record.
    CloseAfterResponse,
    /// Every connection idle (no request in flight) for `after` ms is closed (FIN), as servers
    /// with a keep-alive timeout do. Not per request: `every` does not apply.
    CloseIdle,
}

impl FaultKind {
    const ALL: [(FaultKind, &'static str); 15] = [
        (FaultKind::Http500, "http_500"),
        (FaultKind::Http429, "http_429"),
        (FaultKind::Http503, "http_503"),
        (FaultKind::ResetBeforeHeaders, "reset_before_headers"),
        (FaultKind::ResetMidStream, "reset_mid_stream"),
        (FaultKind::TruncatedChunkedBody, "truncated_chunked_body"),
        (FaultKind::MalformedJsonEvent, "malformed_json_event"),
        (FaultKind::InBandErrorEvent, "in_band_error_event"),
        (FaultKind::AbortMidStream, "abort_mid_stream"),
        (FaultKind::StallBeforeHeaders, "stall_before_headers"),
        (FaultKind::StallMidStream, "stall_mid_stream"),
        (FaultKind::PingForever, "ping_forever"),
        (FaultKind::SlowHeaders, "slow_headers"),
        (FaultKind::CloseAfterResponse, "close_after_response"),
        (FaultKind::CloseIdle, "close_idle"),
    ];

    pub(crate) fn name(self) -> &'static str {
        FaultKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    /// The `after` a kind uses when none is given (ms); `None`: the kind takes no duration.
    fn default_after_ms(self) -> Option<u64> {
        match self {
            FaultKind::Http429 => Some(1000),
            FaultKind::PingForever => Some(100),
            FaultKind::SlowHeaders => Some(500),
            FaultKind::CloseIdle => Some(100),
            _ => None,
        }
    }

    /// Faults that break the stream after some content has gone out.
    pub(crate) fn mid_stream(self) -> bool {
        matches!(
            self,
            FaultKind::ResetMidStream
                | FaultKind::TruncatedChunkedBody
                | FaultKind::MalformedJsonEvent
                | FaultKind::InBandErrorEvent
                | FaultKind::AbortMidStream
                | FaultKind::StallMidStream
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--fault` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultSpec {
    pub(crate) kind: FaultKind,
    /// Every N-th request (1 = all).
    pub(crate) every: u64,
    /// The kind's duration in ms (ping interval, header delay, idle time, Retry-After).
    pub(crate) after_ms: u64,
}

/// Longest `after` accepted: an hour.
const MAX_AFTER_MS: u64 = 3_600_000;

/// Parses `KIND[:every=N][:after=MS]` (a bare number is `after`: `close_idle:200`).
pub(crate) fn parse(text: &str) -> Result<FaultSpec, String> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or("").trim();
    let kind = FaultKind::ALL
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(k, _)| *k)
        .ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown fault {name:?}; known: {}", names.join(", "))
        })?;
    let mut spec = FaultSpec {
        kind,
        every: 1,
        after_ms: kind.default_after_ms().unwrap_or(0),
    };
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or(("after", part));
        let n: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: {key} must be a whole number, got {value:?}"))?;
        match key.trim() {
            "every" if n >= 1 => spec.every = n,
            "every" => return Err(format!("{text:?}: every must be at least 1")),
            "after" if kind.default_after_ms().is_none() => {
                return Err(format!("{text:?}: {name} takes no duration (after)"))
            }
            "after" if n > MAX_AFTER_MS => {
                return Err(format!("{text:?}: after is at most {MAX_AFTER_MS} ms"))
            }
            "after" => spec.after_ms = n,
            other => return Err(format!("{text:?}: unknown option {other:?} (every, after)")),
        }
    }
    if kind == FaultKind::CloseIdle && spec.every != 1 {
        return Err(format!(
            "{text:?}: close_idle applies to every connection; no every"
        ));
    }
    Ok(spec)
}

/// The fault request `request_id` gets: the first per-request spec whose `every` divides it.
pub(crate) fn pick(faults: &[FaultSpec], request_id: u64) -> Option<FaultSpec> {
    faults
        .iter()
        .find(|f| f.kind != FaultKind::CloseIdle && request_id.is_multiple_of(f.every))
        .copied()
}

/// The idle time after which connections are closed (`close_idle`), if any.
pub(crate) fn close_idle_ms(faults: &[FaultSpec]) -> Option<u64> {
    faults
        .iter()
        .find(|f| f.kind == FaultKind::CloseIdle)
        .map(|f| f.after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_options() {
        let f = parse("http_500").unwrap();
        assert_eq!((f.kind, f.every), (FaultKind::Http500, 1));
        let f = parse("reset_mid_stream:every=3").unwrap();
        assert_eq!((f.kind, f.every), (FaultKind::ResetMidStream, 3));
        let f = parse("close_idle:250").unwrap();
        assert_eq!((f.kind, f.after_ms), (FaultKind::CloseIdle, 250));
        let f = parse("ping_forever:every=2:after=20").unwrap();
        assert_eq!((f.every, f.after_ms), (2, 20));
        assert_eq!(parse("slow_headers").unwrap().after_ms, 500);
        for (k, n) in FaultKind::ALL {
            assert_eq!(parse(n).unwrap().kind, k);
            assert_eq!(k.name(), n);
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "nope",
            "http_500:every=0",
            "http_500:every=x",
            "http_500:after=5",
            "slow_headers:after=99999999999",
            "close_idle:every=2",
            "stall_mid_stream:colour=3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_the_first_matching_spec() {
        let faults = [
            parse("http_500:every=4").unwrap(),
            parse("http_503:every=2").unwrap(),
            parse("close_idle:10").unwrap(),
        ];
        let kinds: Vec<Option<FaultKind>> =
            (1..=4).map(|k| pick(&faults, k).map(|f| f.kind)).collect();
        assert_eq!(
            kinds,
            [
                None,
                Some(FaultKind::Http503),
                None,
                Some(FaultKind::Http500)
            ]
        );
        assert_eq!(close_idle_ms(&faults), Some(10));
    }
}
