//! Sim CPU cost per SSE event, measured against a minimal glommio load client (no parsing; it
//! only finds the end of each response). Not run by default:
//!
//! `cargo test --profile bench-fast --lib sim::bench -- --ignored --nocapture`
//!
//! Prints the sim executor thread's CPU time per content chunk for a paced load (many streams,
//! 10 ms ITL) and a bulk load (ITL 0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};

use super::{spawn, SimAdvancedArgs, SimArgs};
use crate::tokenizer::Tokenizer;

/// CPU seconds of the threads whose name starts with `prefix` (from /proc).
fn threads_cpu_s(prefix: &str) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime, stime are 14, 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ut: f64 = f[11].parse().unwrap();
        let st: f64 = f[12].parse().unwrap();
        total += (ut + st) / tick;
    }
    total
}

fn load(addr: std::net::SocketAddr, streams: usize, tokens: u32, duration: Duration) -> u64 {
    let body = format!(
        "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"benchmark me\"}}],\
         \"max_tokens\":{tokens},\"ignore_eos\":true,\"stream\":true}}"
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    LocalExecutorBuilder::new(Placement::Fixed(1))
        .io_memory(64 * 1024)
        .spawn(move || async move {
            let until = Instant::now() + duration;
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let request = request.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut s = glommio::net::TcpStream::connect(addr).await.unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    let end = b"[DONE]\n\n\r\n0\r\n\r\n";
                    let mut responses = 0u64;
                    while Instant::now() < until {
                        s.write_all(&request).await.unwrap();
                        let mut tail: Vec<u8> = Vec::new();
                        loop {
                            let n = s.read(&mut buf).await.unwrap();
                            assert!(n > 0, "sim closed the connection");
                            tail.extend_from_slice(&buf[..n]);
                            if tail.ends_with(end) {
                                break;
                            }
                            let keep = tail.len().saturating_sub(end.len());
                            tail.drain(..keep);
                        }
                        responses += 1;
                    }
                    responses
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await;
            }
            total
        })
        .unwrap()
        .join()
        .unwrap()
}

fn measure(label: &str, itl_ms: f64, streams: usize, tokens: u32, secs: u64) {
    let tok = Arc::new(Tokenizer::builtin().unwrap());
    let args = SimArgs {
        port: 0,
        ttft_base_ms: itl_ms,
        ttft_per_uncached_token_us: 0.0,
        itl_ms,
        advanced: Box::new(SimAdvancedArgs {
            pin_cpus: vec![0],
            ..SimAdvancedArgs::default()
        }),
        ..SimArgs::default()
    };
    let sim = spawn(&args, tok).unwrap();
    let addr = sim.addr;
    let metrics = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        let line = t
            .lines()
            .find(|l| l.starts_with("vllm:generation_tokens_total"))
            .unwrap()
            .to_owned();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let cpu0 = threads_cpu_s("parley-sim");
    let tok0 = metrics();
    let t0 = Instant::now();
    let responses = load(addr, streams, tokens, Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    let chunks = metrics() - tok0;
    let cpu = threads_cpu_s("parley-sim") - cpu0;
    sim.shutdown();
    println!(
        "{label}: {streams} streams × {tokens} tokens, itl {itl_ms} ms: {responses} responses, \
         {chunks} chunks in {wall:.1} s = {:.0} chunks/s; sim CPU {cpu:.2} s = {:.2} µs/chunk \
         ({:.0}% of a core)",
        chunks as f64 / wall,
        cpu * 1e6 / chunks as f64,
        cpu / wall * 100.0
    );
}

#[test]
#[ignore]
fn sim_cpu_per_chunk() {
    let _qos = super::pmqos::PmQos::hold();
    measure("paced", 10.0, 512, 256, 6);
    measure("bulk", 0.0, 64, 1024, 4);
}
