//! Feeds arbitrary bytes to the frame parser and body decoder, as a connection would.
//! Run: `cargo +nightly fuzz run frame_decoder` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tarn_proto::frame::{parse_frame, Parsed, DEFAULT_MAX_BODY};
use tarn_proto::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    let mut at = 0;
    while let Ok(Parsed::Frame(f)) = parse_frame(&data[at..], DEFAULT_MAX_BODY) {
        let _ = decoder.decode(&f);
        at += f.wire_len();
    }
});
