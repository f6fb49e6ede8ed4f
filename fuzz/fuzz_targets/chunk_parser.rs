//! The chunk parser: any bytes, as a streaming chunk and as a whole response, never panic and
//! only append to the reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley::chunk::ChunkParser;

fuzz_target!(|data: &[u8]| {
    let mut parser = ChunkParser::new();
    let mut reply = String::from("earlier ");
    let mut a = data.to_vec();
    let _ = parser.parse_chunk(&mut a, &mut reply);
    assert!(reply.starts_with("earlier "));
    let mut b = data.to_vec();
    let _ = parser.parse_response(&mut b, &mut reply);
    let _ = ChunkParser::is_done(data);
});
