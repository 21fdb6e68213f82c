//! resync over arbitrary byte streams must never panic and only return decodable spans.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tape_formats::*;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Some((off, len)) = resync(data, at) {
        assert!(off >= at && off + len <= data.len());
        assert!(decode_prefix(&data[off..off + len]).is_ok());
        at = off + 1;
    }
});
