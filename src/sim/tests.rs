//! Tests of the sim with the real (builtin) tokenizer: prompt counting and per-message caching,
//! replies of exactly N tokens, and end-to-end runs over TCP with hand-written HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pmqos::PmQos;
use super::prompt::{Msg, PromptEncoder};
use super::record::{content_hash, hash_hex, Record};
use super::reply::{ReplyGen, ReplyWords};
use super::{spawn, SimArgs, SimHandle};
use crate::tokenizer::{render_chat, Tokenizer};

fn tok() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(Tokenizer::builtin().expect("builtin tokenizer")))
        .clone()
}

fn whole_ids(t: &Tokenizer, msgs: &[(&str, &str)]) -> Vec<u32> {
    let mut s = String::new();
    render_chat(msgs.iter().copied(), &mut s);
    t.encode(&s)
}

// ---------------------------------------------------------------------------------------------
// Prompt encoding

#[test]
fn per_message_encoding_equals_whole_prompt_encoding() {
    let t = tok();
    let mut enc = PromptEncoder::new(t.clone(), 100_000);
    assert!(
        enc.per_message(),
        "ChatML separators are special tokens: messages tokenize independently"
    );
    let words = t.single_token_words();
    let reply: String = words.iter().take(16).map(String::as_str).collect();
    let conversations: Vec<Vec<(&str, &str)>> = vec![
        vec![("user", "Hello!")],
        vec![
            ("system", "You are terse.\n"),
            ("user", "  leading spaces and trailing newlines\n\n"),
            ("assistant", &reply),
            ("user", "\n\nnumbers 1234567 and ünïcödé, 中文, emoji 🦀"),
        ],
        vec![
            ("user", ""),
            ("assistant", ""),
            ("user", "<not special> <|im_end"),
        ],
    ];
    for conv in &conversations {
        let msgs: Vec<Msg<'_>> = conv.iter().map(|(r, c)| Msg::new(r, c)).collect();
        // Twice: the second time every message comes from the cache.
        for _ in 0..2 {
            let mut ids = Vec::new();
            enc.chat_ids(&msgs, &mut ids).unwrap();
            assert_eq!(ids, whole_ids(&t, conv), "{conv:?}");
        }
    }
    // A growing conversation: each turn re-sends the history plus new messages.
    let mut history: Vec<(String, String)> = Vec::new();
    for turn in 0..5 {
        history.push((
            "user".into(),
            format!("question {turn}: {}", "why ".repeat(turn * 7)),
        ));
        let conv: Vec<(&str, &str)> = history
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        let msgs: Vec<Msg<'_>> = conv.iter().map(|(r, c)| Msg::new(r, c)).collect();
        let mut ids = Vec::new();
        enc.chat_ids(&msgs, &mut ids).unwrap();
        assert_eq!(ids, whole_ids(&t, &conv));
        history.push(("assistant".into(), reply.clone()));
    }
    // Bare token counts.
    let m = Msg::new("assistant", &reply);
    assert_eq!(enc.bare_tokens(&m), 16);
    assert_eq!(enc.bare_tokens(&m), 16);
}

#[test]
fn encode_cache_is_bounded() {
    let t = tok();
    // Room for only a few messages: still correct, just re-encoded.
    let mut enc = PromptEncoder::new(t.clone(), 40);
    let texts: Vec<String> = (0..20)
        .map(|i| format!("message number {i} with some words"))
        .collect();
    for _ in 0..2 {
        for text in &texts {
            let mut ids = Vec::new();
            enc.chat_ids(&[Msg::new("user", text)], &mut ids).unwrap();
            assert_eq!(ids, whole_ids(&t, &[("user", text)]));
        }
    }
}

#[test]
fn reply_is_deterministic_and_exactly_n_tokens() {
    let t = tok();
    let words = ReplyWords::new(&t).unwrap();
    let reply = |seed: u64, key: u64, n: u32| {
        let mut g = ReplyGen::new(seed, key);
        let mut out: Vec<u8> = Vec::new();
        let mut ids = Vec::new();
        g.push_words(&words, n, &mut out, Some(&mut ids));
        let text: String = serde_json::from_slice(&[b"\"", &out[..], b"\""].concat()).unwrap();
        (text, ids, g.hash())
    };
    for n in [1u32, 2, 17, 300] {
        let (text, ids, h) = reply(5, 99, n);
        assert_eq!(t.count(&text), n as usize, "{text:?}");
        assert_eq!(
            t.encode(&text),
            ids,
            "the recorded ids are the text's encoding"
        );
        assert_eq!(h, content_hash(&text));
        assert_eq!(reply(5, 99, n).0, text, "same seed and request, same reply");
    }
    assert_ne!(reply(5, 99, 20).0, reply(6, 99, 20).0);
}

// ---------------------------------------------------------------------------------------------
// End to end

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("parley-sim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(args: SimArgs) -> SimHandle {
    spawn(&args, tok()).expect("sim starts")
}

fn base_args() -> SimArgs {
    SimArgs {
        port: 0,
        ttft_base_ms: 3.0,
        ttft_per_uncached_token_us: 20.0,
        itl_ms: 1.0,
        seed: 3,
        ..SimArgs::default()
    }
}

/// A response read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    /// Data payloads of the SSE events, checking the `data: …\n\n` framing.
    fn events(&self) -> Vec<String> {
        let text = std::str::from_utf8(&self.body).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_owned()
            })
            .collect()
    }
}

/// One keep-alive HTTP/1.1 connection, written and parsed by hand.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: sim\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let s = self.reader.get_mut();
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
    }

    fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        (status, headers)
    }

    /// Reads a whole response; `on_chunk` sees each chunk of a chunked body as it arrives.
    fn read(&mut self, mut on_chunk: impl FnMut(&[u8])) -> Reply {
        let (status, headers) = self.read_head();
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = reply.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            reply.body = body;
        } else {
            assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                chunk.truncate(n);
                if n == 0 {
                    break;
                }
                on_chunk(&chunk);
                reply.body.extend_from_slice(&chunk);
            }
        }
        reply
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> Reply {
        let body = if method == "POST" {
            body.to_string().into_bytes()
        } else {
            Vec::new()
        };
        self.send(method, path, headers, &body);
        self.read(|_| {})
    }
}

fn ids_headers(conv: u64, turn: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-parley-conversation", conv.to_string()),
        ("x-parley-turn", turn.to_string()),
    ]
}

/// Sample value of a Prometheus line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

fn read_records(path: &PathBuf) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The reply text carried by content events (chat `delta.content` or completions `text`).
fn reply_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            let c = &e["choices"][0];
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn long_system_prompt() -> String {
    "You are a careful assistant. Answer every question with precise, short, verifiable facts. "
        .repeat(6)
}

#[test]
fn end_to_end_stream_shape_cache_failures_metrics_and_record() {
    let _qos = PmQos::hold();
    let dir = scratch("e2e");
    let record = dir.join("record.jsonl");
    let sim = start(SimArgs {
        record: Some(record.clone()),
        fail_every: 5,
        ..base_args()
    });
    let t = tok();
    let system = long_system_prompt();
    let chat = |stream: bool, usage: bool| {
        let mut b = json!({
            "model": "parley-sim",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "a prefix cache?"}]},
            ],
            "max_tokens": 7,
            "ignore_eos": true,
            "stream": stream,
        });
        if usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    };
    let prompt_tokens = whole_ids(
        &t,
        &[("system", &system), ("user", "What is\na prefix cache?")],
    )
    .len() as u64;
    let block_cached = (prompt_tokens - 1) / 16 * 16;
    let mut conn = Conn::open(sim.addr);

    // 1: streaming with usage, cold cache.
    let t_send = Instant::now();
    let r1 = conn.request(
        "POST",
        "/v1/chat/completions",
        &ids_headers(0, 0),
        &chat(true, true),
    );
    let elapsed = t_send.elapsed();
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("content-type"), Some("text/event-stream"));
    let ev = r1.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let ev: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Prelude, 7 content chunks, usage.
    assert_eq!(ev.len(), 9, "{ev:#?}");
    assert_eq!(
        ev[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for (i, e) in ev[..8].iter().enumerate() {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "parley-sim");
        assert_eq!(e["id"], ev[0]["id"]);
        assert!(e["created"].is_u64());
        let fr = &e["choices"][0]["finish_reason"];
        if i == 7 {
            assert_eq!(fr, "length");
        } else {
            assert!(fr.is_null());
        }
        if i > 0 {
            let c = e["choices"][0]["delta"]["content"].as_str().unwrap();
            assert!(!c.is_empty());
            assert_eq!(t.count(c), 1, "one token per chunk: {c:?}");
        }
    }
    assert_eq!(ev[8]["choices"], json!([]));
    assert_eq!(
        ev[8]["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 7,
               "total_tokens": prompt_tokens + 7, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let text1 = reply_text(&ev);
    assert_eq!(t.count(&text1), 7);
    // At least TTFT (3 ms + 20 µs × prompt) + 6 × 1 ms; loosely bounded above.
    let floor = Duration::from_micros(3_000 + 20 * prompt_tokens + 6_000);
    assert!(
        elapsed >= floor && elapsed < floor + Duration::from_secs(2),
        "{elapsed:?}"
    );

    // 2: the same prompt streamed without usage: cached blocks, same reply, no usage chunk.
    let r2 = conn.request(
        "POST",
        "/v1/chat/completions",
        &ids_headers(0, 1),
        &chat(true, false),
    );
    let ev2: Vec<Value> = r2.events()[..r2.events().len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(ev2.len(), 8, "no usage chunk without include_usage");
    assert!(ev2.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(reply_text(&ev2), text1, "same seed and prompt, same reply");

    // 3: non-streaming: the whole reply with usage and cached tokens.
    let r3 = conn.request("POST", "/v1/chat/completions", &[], &chat(false, false));
    assert_eq!(r3.status, 200);
    let j = r3.json();
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant");
    assert_eq!(j["choices"][0]["message"]["content"], text1.as_str());
    assert_eq!(j["choices"][0]["finish_reason"], "length");
    assert_eq!(j["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(j["usage"]["completion_tokens"], 7);
    assert_eq!(
        j["usage"]["prompt_tokens_details"]["cached_tokens"],
        block_cached
    );

    // 4: completions, streamed: no prelude, `text` instead of `delta`.
    let r4 = conn.request(
        "POST",
        "/v1/completions",
        &ids_headers(1, 0),
        &json!({"prompt": "Once upon a time", "max_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    let ev4: Vec<Value> = r4.events()[..r4.events().len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(ev4.len(), 5, "no prelude on completions: 4 content + usage");
    assert_eq!(ev4[0]["object"], "text_completion");
    assert_eq!(ev4[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        ev4[4]["usage"]["prompt_tokens"],
        t.count("Once upon a time")
    );
    let text4 = reply_text(&ev4);
    assert_eq!(t.count(&text4), 4);

    // 5: injected failure, before any stream.
    let r5 = conn.request(
        "POST",
        "/v1/chat/completions",
        &ids_headers(2, 0),
        &chat(true, true),
    );
    assert_eq!(r5.status, 500);
    let e5 = r5.json();
    assert_eq!(e5["error"]["code"], 500);
    assert!(e5["error"]["message"]
        .as_str()
        .unwrap()
        .contains("fail-every"));

    // 6: bad input → 400 with an OpenAI-style error; the connection stays usable.
    let r6 = conn.request(
        "POST",
        "/v1/chat/completions",
        &[],
        &json!({"messages": "nope"}),
    );
    assert_eq!(r6.status, 400);
    assert_eq!(r6.json()["error"]["type"], "BadRequestError");
    conn.send("POST", "/v1/chat/completions", &[], b"{not json");
    let r7 = conn.read(|_| {});
    assert_eq!(r7.status, 400);
    assert!(r7.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid"));

    // Other endpoints.
    assert_eq!(
        conn.request("GET", "/health", &[], &Value::Null).status,
        200
    );
    let models = conn.request("GET", "/v1/models", &[], &Value::Null).json();
    assert_eq!(models["data"][0]["id"], "parley-sim");
    assert_eq!(conn.request("GET", "/nope", &[], &Value::Null).status, 404);
    let m = conn.request("GET", "/metrics", &[], &Value::Null);
    let m = String::from_utf8(m.body).unwrap();
    let ok_prompts = 3 * prompt_tokens + t.count("Once upon a time") as u64;
    assert_eq!(metric(&m, "vllm:prompt_tokens_total"), ok_prompts);
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total"), ok_prompts);
    assert_eq!(metric(&m, "vllm:prefix_cache_hits_total"), 2 * block_cached);
    assert_eq!(metric(&m, "vllm:generation_tokens_total"), 7 * 3 + 4);
    assert_eq!(
        metric(&m, "vllm:request_success_total{finished_reason=\"length\""),
        4
    );
    assert!(m.contains("vllm:cache_config_info{block_size=\"16\""));
    assert_eq!(
        metric(&m, "parley_sim:request_failures_total{reason=\"injected\""),
        1
    );
    assert_eq!(
        metric(&m, "parley_sim:request_failures_total{reason=\"rejected\""),
        2
    );
    assert_eq!(metric(&m, "vllm:num_requests_running"), 0);

    drop(conn);
    sim.shutdown();

    // The record: one line per generation request, in arrival order here (one connection).
    let recs = read_records(&record);
    assert_eq!(recs.len(), 7, "{recs:#?}");
    let ids: Vec<u64> = recs.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    let r = &recs[0];
    assert_eq!(r.conversation, Some(json!(0)));
    assert_eq!(r.turn, Some(json!(0)));
    assert_eq!(recs[1].turn, Some(json!(1)));
    assert_eq!(recs[2].conversation, None);
    assert_eq!(r.endpoint, "chat");
    assert_eq!(r.status, 200);
    assert!(r.stream && r.include_usage && r.ignore_eos && !r.aborted && !r.failed);
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(
        (r.prompt_tokens, r.cached_tokens, r.completion_tokens),
        (prompt_tokens, 0, 7)
    );
    assert_eq!(r.messages, 2);
    assert_eq!(r.message_roles, vec!["system", "user"]);
    assert_eq!(
        r.message_hashes,
        vec![
            hash_hex(content_hash(&system)),
            hash_hex(content_hash("What is\na prefix cache?"))
        ]
    );
    assert_eq!(
        r.message_tokens,
        vec![
            t.count(&system) as u64,
            t.count("What is\na prefix cache?") as u64
        ]
    );
    assert_eq!(r.reply_hash, Some(hash_hex(content_hash(&text1))));
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
    // Times: arrival ≤ t0 < first chunk ≤ … ≤ end, and no chunk before its deadline.
    assert!(r.arrival_ns <= r.t0_ns);
    assert_eq!(r.chunk_ns.len(), 7);
    assert_eq!(r.first_token_ns, Some(r.chunk_ns[0]));
    let first_deadline = r.t0_ns + 3_000_000 + 20_000 * prompt_tokens;
    for (i, &c) in r.chunk_ns.iter().enumerate() {
        let deadline = first_deadline + i as u64 * 1_000_000;
        assert!(c >= deadline, "chunk {i} sent {} ns early", deadline - c);
        assert!(
            c - deadline < 500_000_000,
            "chunk {i} {} ms late",
            (c - deadline) / 1_000_000
        );
    }
    assert!(r.chunk_ns.windows(2).all(|w| w[0] <= w[1]));
    assert!(r.end_ns >= *r.chunk_ns.last().unwrap());
    // The cached repeat: a shorter TTFT by the cached tokens' prefill.
    let r2 = &recs[1];
    assert_eq!(r2.cached_tokens, block_cached);
    assert!(!r2.include_usage);
    assert!(r2.chunk_ns[0] >= r2.t0_ns + 3_000_000 + 20_000 * (prompt_tokens - block_cached));
    assert_eq!(r2.reply_hash, r.reply_hash);
    // Non-stream: one "chunk", the reply.
    assert!(!recs[2].stream);
    assert_eq!(recs[2].chunk_ns.len(), 1);
    assert_eq!(recs[2].cached_tokens, block_cached);
    assert!(recs[2].chunk_ns[0] >= recs[2].t0_ns + 3_000_000 + 6_000_000);
    // Completions.
    assert_eq!(recs[3].endpoint, "completions");
    assert_eq!(recs[3].message_roles, vec!["prompt"]);
    assert_eq!(recs[3].reply_hash, Some(hash_hex(content_hash(&text4))));
    // The injected failure and the rejects.
    assert!(recs[4].failed);
    assert_eq!(recs[4].status, 500);
    assert_eq!(recs[4].conversation, Some(json!(2)));
    assert_eq!(recs[4].completion_tokens, 0);
    assert_eq!((recs[5].status, recs[6].status), (400, 400));
    assert!(recs[5].error.is_some());
    // hits == Σ cached_tokens.
    let cached_sum: u64 = recs.iter().map(|r| r.cached_tokens).sum();
    assert_eq!(cached_sum, 2 * block_cached);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fail_every_counts_requests_globally_from_the_nth() {
    let sim = start(SimArgs {
        fail_every: 3,
        itl_ms: 0.0,
        ttft_base_ms: 0.0,
        ..base_args()
    });
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let mut statuses = Vec::new();
    // Alternate between two connections: the count is over the server, not per connection.
    let mut a = Conn::open(sim.addr);
    let mut b = Conn::open(sim.addr);
    for i in 0..7 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        statuses.push(c.request("POST", "/v1/chat/completions", &[], &body).status);
    }
    assert_eq!(statuses, vec![200, 200, 500, 200, 200, 500, 200]);
    sim.shutdown();
}

#[test]
fn tokens_per_chunk_merges_tokens_and_output_blocks_are_cached() {
    let sim = start(SimArgs {
        tokens_per_chunk: 3,
        itl_ms: 0.5,
        ..base_args()
    });
    let t = tok();
    let mut conn = Conn::open(sim.addr);
    let user = "Tell me a story about caches, blocks and hashes.";
    let first = json!({"messages": [{"role": "user", "content": user}], "max_tokens": 40,
                       "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let r = conn.request("POST", "/v1/chat/completions", &[], &first);
    let ev: Vec<Value> = r.events()[..r.events().len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Prelude + ceil(40 / 3) = 14 content chunks + usage.
    assert_eq!(ev.len(), 16);
    let counts: Vec<usize> = ev[1..15]
        .iter()
        .map(|e| t.count(e["choices"][0]["delta"]["content"].as_str().unwrap()))
        .collect();
    assert_eq!(counts, [vec![3; 13], vec![1]].concat());
    assert_eq!(ev[14]["choices"][0]["finish_reason"], "length");
    assert_eq!(ev[15]["usage"]["completion_tokens"], 40);
    let reply = reply_text(&ev);

    // The next turn sends history + reply: its cached prefix reaches into the reply's blocks.
    let second = json!({"messages": [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"}], "max_tokens": 2});
    let j = conn
        .request("POST", "/v1/chat/completions", &[], &second)
        .json();
    let prompt1 = whole_ids(&t, &[("user", user)]).len() as u64;
    // Cached: every full block of prompt1 + 39 computed reply tokens.
    let expected = (prompt1 + 39) / 16 * 16;
    assert!(expected > prompt1 / 16 * 16, "the test needs reply blocks");
    assert_eq!(
        j["usage"]["prompt_tokens_details"]["cached_tokens"],
        expected
    );
    sim.shutdown();
}

#[test]
fn output_length_rules_over_http() {
    let sim = start(SimArgs {
        itl_ms: 0.0,
        ttft_base_ms: 0.0,
        default_output_tokens: 5,
        ..base_args()
    });
    let mut conn = Conn::open(sim.addr);
    let mut ask = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "count"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let j = conn.request("POST", "/v1/chat/completions", &[], &b).json();
        (
            j["usage"]["completion_tokens"].as_u64().unwrap(),
            j["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    assert_eq!(ask(json!({})), (5, "stop".into()));
    assert_eq!(ask(json!({"max_tokens": 3})), (3, "length".into()));
    assert_eq!(ask(json!({"max_tokens": 30})), (5, "stop".into()));
    assert_eq!(
        ask(json!({"max_tokens": 30, "ignore_eos": true})),
        (30, "length".into())
    );
    assert_eq!(
        ask(json!({"max_completion_tokens": 9, "max_tokens": 2, "ignore_eos": true})),
        (9, "length".into())
    );
    assert_eq!(ask(json!({"ignore_eos": true})), (5, "length".into()));
    assert_eq!(
        ask(json!({"max_tokens": 30, "min_tokens": 12})),
        (12, "stop".into())
    );
    assert_eq!(
        ask(json!({"max_tokens": 8, "min_tokens": 12})),
        (8, "length".into())
    );
    sim.shutdown();
}

#[test]
fn client_disconnect_is_recorded_as_abort() {
    let dir = scratch("abort");
    let record = dir.join("record.jsonl");
    let sim = start(SimArgs {
        record: Some(record.clone()),
        itl_ms: 2.0,
        ..base_args()
    });
    let mut conn = Conn::open(sim.addr);
    let body = json!({"messages": [{"role": "user", "content": "go on forever"}],
                      "max_tokens": 5000, "ignore_eos": true, "stream": true});
    conn.send(
        "POST",
        "/v1/chat/completions",
        &ids_headers(9, 3),
        body.to_string().as_bytes(),
    );
    let (status, _) = conn.read_head();
    assert_eq!(status, 200);
    // Read a few chunks, then hang up.
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < 3000 {
        got += conn.reader.read(&mut buf).unwrap();
    }
    drop(conn);
    let mut probe = Conn::open(sim.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = probe.request("GET", "/metrics", &[], &Value::Null);
        let m = String::from_utf8(m.body).unwrap();
        if metric(&m, "parley_sim:request_failures_total{reason=\"aborted\"") == 1 {
            assert_eq!(metric(&m, "vllm:num_requests_running"), 0);
            break;
        }
        assert!(Instant::now() < deadline, "abort not noticed:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    sim.shutdown();
    let recs = read_records(&record);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert!(r.aborted);
    assert_eq!(r.turn, Some(json!(3)));
    assert!(r.completion_tokens > 0 && r.completion_tokens < 5000);
    assert_eq!(r.chunk_ns.len() as u64, r.completion_tokens);
    assert_eq!(r.planned_tokens, 5000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cores_share_one_prefix_cache_and_shutdown_cuts_streams() {
    let dir = scratch("cores");
    let record = dir.join("record.jsonl");
    let sim = start(SimArgs {
        cores: 2,
        record: Some(record.clone()),
        itl_ms: 0.0,
        ttft_base_ms: 0.0,
        ..base_args()
    });
    let system = long_system_prompt();
    let body = json!({"messages": [{"role": "system", "content": system},
                                   {"role": "user", "content": "hello"}], "max_tokens": 2});
    // Many fresh connections: the kernel spreads them over both executors, and every request
    // after the first hits the one shared cache.
    let mut cached = Vec::new();
    for _ in 0..12 {
        let mut c = Conn::open(sim.addr);
        let j = c.request("POST", "/v1/chat/completions", &[], &body).json();
        cached.push(
            j["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(cached[0], 0);
    assert!(
        cached[1..].iter().all(|&c| c > 0 && c == cached[1]),
        "{cached:?}"
    );

    // A stream still running at shutdown is cut and recorded as aborted.
    let mut c = Conn::open(sim.addr);
    let long = json!({"messages": [{"role": "user", "content": "long"}], "max_tokens": 100000,
                      "ignore_eos": true, "stream": true});
    c.send(
        "POST",
        "/v1/chat/completions",
        &[],
        long.to_string().as_bytes(),
    );
    assert_eq!(c.read_head().0, 200);
    let started = Instant::now();
    sim.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown is prompt"
    );
    let recs = read_records(&record);
    assert_eq!(recs.len(), 13);
    assert!(recs.last().unwrap().aborted);
    std::fs::remove_dir_all(&dir).unwrap();
}
