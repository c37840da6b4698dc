//! The PostgreSQL front end's parsing of untrusted bytes: startup packets (sessions, SSL, GSS
//! and cancel requests) and the frame walker over a message stream cut into arbitrary reads.
//! Never a panic; the walker finds the same messages however the stream is cut.
#![no_main]

use credswap::postgres::wire::{parse_startup, Frames, Seen};
use libfuzzer_sys::fuzz_target;

#[derive(Default, PartialEq, Debug)]
struct Log(Vec<(u8, usize)>, Vec<u8>);

impl Seen for Log {
    fn message(&mut self, tag: u8, len: usize) {
        self.0.push((tag, len));
    }
    fn ready(&mut self, status: u8) {
        self.1.push(status);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_startup(data);
    // The first byte picks the read size; the rest is the stream.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut whole = Log::default();
    let whole_result = Frames::new(1 << 16).walk(stream, &mut whole);
    let mut pieces = Log::default();
    let mut frames = Frames::new(1 << 16);
    let mut pieces_result = Ok(());
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        pieces_result = frames.walk(chunk, &mut pieces);
        if pieces_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_result.is_ok(), pieces_result.is_ok());
    if whole_result.is_ok() {
        assert_eq!(whole, pieces);
    }
});
