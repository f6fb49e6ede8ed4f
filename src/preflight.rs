//! `--wait-for-model-timeout S`: before any traffic, wait until every target answers
//! `GET …/v1/models` (as a server does once its model is loaded), so a run started beside a
//! server that is still starting does not burn its dataset on connection failures.
//!
//! Blocking and plain (one tiny request every half second on the main thread, over rustls's
//! blocking stream for an https target): it runs once, before the engine starts, so it needs
//! neither the executors nor hyper.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::client::Endpoint;

/// Time between two attempts.
const POLL: Duration = Duration::from_millis(500);

/// The models path beside an endpoint's path: `/x/v1/chat/completions` → `/x/v1/models`.
pub(crate) fn models_path(endpoint_path: &str) -> String {
    for suffix in ["/chat/completions", "/completions"] {
        if let Some(base) = endpoint_path.strip_suffix(suffix) {
            return format!("{base}/models");
        }
    }
    "/v1/models".to_owned()
}

/// One attempt: `Ok(status)` when the server answered with a status line, `Err(why)` otherwise.
fn probe(endpoint: &Endpoint, path: &str, limit: Duration) -> Result<u16, String> {
    let limit = limit.max(Duration::from_millis(10));
    let s = TcpStream::connect_timeout(&endpoint.addr, limit).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    match &endpoint.tls {
        None => ask(s, endpoint, path),
        Some(t) => ask(
            crate::tls::blocking(s, t).map_err(|e| e.to_string())?,
            endpoint,
            path,
        ),
    }
}

/// [`probe`]'s request and status line over an open stream.
fn ask(mut s: impl Read + Write, endpoint: &Endpoint, path: &str) -> Result<u16, String> {
    let host = endpoint.host.to_str().unwrap_or("localhost");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(auth) = endpoint
        .authorization
        .as_ref()
        .and_then(|a| a.to_str().ok())
    {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "closed without an HTTP status line".to_owned())
}

/// Waits until every endpoint answers with a status below 500, or fails after `timeout` naming
/// the target and its last answer.
pub fn wait_for_model(endpoints: &[Endpoint], timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut seen: Vec<SocketAddr> = Vec::new();
    for endpoint in endpoints {
        if seen.contains(&endpoint.addr) {
            continue;
        }
        let path = models_path(endpoint.path.path());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match probe(endpoint, &path, left.min(Duration::from_secs(2))) {
                Ok(status) if status < 500 => break,
                Ok(status) => format!("HTTP {status}"),
                Err(why) => why,
            };
            // Give up only once the whole timeout has passed: the last attempt is at the
            // deadline, so a target that comes up just in time is still seen.
            if Instant::now() >= deadline {
                return Err(format!(
                    "the target {} did not answer GET {path} within --wait-for-model-timeout \
                     {:.1} s (last: {last})",
                    endpoint.addr,
                    timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
            if crate::signal::interrupted() {
                return Err("interrupted while waiting for the target".into());
            }
        }
        seen.push(endpoint.addr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_path_sits_beside_the_endpoint() {
        assert_eq!(models_path("/v1/chat/completions"), "/v1/models");
        assert_eq!(models_path("/v1/completions"), "/v1/models");
        assert_eq!(
            models_path("/proxy/v1/chat/completions"),
            "/proxy/v1/models"
        );
        assert_eq!(models_path("/generate"), "/v1/models");
    }
}
