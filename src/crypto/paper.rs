//! Paper form of an exported key: printable, retypeable, with checksums that point
//! at the line holding a typo.
//!
//! ```text
//! tapevault paper key v1
//! name: offsite
//! fingerprint: 5c1e...
//! 01  ABCD EFGH JKMN PQRS TVWX YZ01 2345 6789  K3F9
//! 02  ...
//! key checksum: 8Q2M 4T7A
//! ```
//! Data is Crockford base32 (no I, L, O, U; on input `O`=0, `I`/`L`=1, any case,
//! spaces and hyphens ignored), 20 bytes (32 characters) per line in groups of four.
//! Each line ends with a 4-character checksum over its number and its characters,
//! so a typo, a swapped pair of lines or a skipped line is reported by line number;
//! a final 8-character checksum covers the whole decoded blob.

use super::CryptoError;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Bytes per line: 20 bytes = 32 characters, short enough to retype without losing place.
const BYTES_PER_LINE: usize = 20;
/// Largest blob accepted from paper (a key file is ~150 bytes); bounds the parser.
const MAX_PAPER_BYTES: usize = 4096;
const HEADER: &str = "tapevault paper key v1";
const LINE_CHECK_CONTEXT: &str = "tapevault 2026-11 paper key line checksum v1";
const WHOLE_CHECK_CONTEXT: &str = "tapevault 2026-11 paper key checksum v1";

/// Encode bytes as Crockford base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode_char(c: char) -> Option<u32> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| a as char == c)
        .map(|p| p as u32)
}

/// Decode Crockford base32 (characters already normalized, no separators).
/// Rejects unknown characters and non-zero padding bits.
pub fn base32_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.chars() {
        let v = decode_char(c).ok_or_else(|| format!("character {c:?} is not base32"))?;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits >= 5 || acc & ((1 << bits) - 1) != 0 {
        return Err("wrong number of characters (or a typo in the last one)".into());
    }
    Ok(out)
}

fn normalize(s: &str) -> Result<String, String> {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_whitespace() || c == '-' {
            continue;
        }
        let v = decode_char(c).ok_or_else(|| format!("character {c:?} is not base32"))?;
        out.push(ALPHABET[v as usize] as char);
    }
    Ok(out)
}

fn check_chars(context: &str, prefix: &[u8], data: &[u8], n: usize) -> String {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(prefix);
    h.update(data);
    base32_encode(&h.finalize().as_bytes()[..5])[..n].to_string()
}

fn line_check(line_no: usize, chars: &str) -> String {
    check_chars(
        LINE_CHECK_CONTEXT,
        &(line_no as u64).to_be_bytes(),
        chars.as_bytes(),
        4,
    )
}

fn groups(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Render `blob` as paper text. `name` and `fingerprint` are informational lines.
pub fn encode(blob: &[u8], name: &str, fingerprint_hex: &str) -> String {
    let mut out = format!("{HEADER}\nname: {name}\nfingerprint: {fingerprint_hex}\n");
    for (i, chunk) in blob.chunks(BYTES_PER_LINE).enumerate() {
        let chars = base32_encode(chunk);
        out.push_str(&format!(
            "{:02}  {}  {}\n",
            i + 1,
            groups(&chars),
            line_check(i + 1, &chars)
        ));
    }
    let whole = check_chars(WHOLE_CHECK_CONTEXT, &[], blob, 8);
    out.push_str(&format!("key checksum: {}\n", groups(&whole)));
    out
}

/// True if `text` looks like a paper key (its header line is present).
pub fn is_paper(text: &[u8]) -> bool {
    std::str::from_utf8(text)
        .map(|t| t.lines().any(|l| l.trim().eq_ignore_ascii_case(HEADER)))
        .unwrap_or(false)
}

/// Parse paper text back into the blob. Errors name the line to retype.
pub fn decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    let err = |line: usize, reason: String| CryptoError::Paper { line, reason };
    let mut blob = Vec::new();
    let mut expected_line = 1usize;
    let mut whole: Option<(usize, String)> = None;
    for (idx, raw) in text.lines().enumerate() {
        let text_line = idx + 1;
        let l = raw.trim();
        let lower = l.to_ascii_lowercase();
        if l.is_empty()
            || lower == HEADER
            || lower.starts_with("name:")
            || lower.starts_with("fingerprint:")
        {
            continue;
        }
        if let Some(rest) = lower.strip_prefix("key checksum:") {
            let n = normalize(rest).map_err(|e| err(text_line, e))?;
            whole = Some((text_line, n));
            continue;
        }
        let mut tokens: Vec<&str> = l.split_whitespace().collect();
        let number: usize = tokens
            .first()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| err(text_line, "expected a numbered line of key data".into()))?;
        if number != expected_line {
            return Err(err(
                text_line,
                format!("found key line {number} where line {expected_line} belongs (missing or out of order)"),
            ));
        }
        tokens.remove(0);
        let check = tokens
            .pop()
            .ok_or_else(|| err(text_line, format!("key line {number} has no data")))?;
        let chars = normalize(&tokens.concat())
            .map_err(|e| err(text_line, format!("key line {number}: {e}")))?;
        let check =
            normalize(check).map_err(|e| err(text_line, format!("key line {number}: {e}")))?;
        if line_check(number, &chars) != check {
            return Err(err(
                text_line,
                format!("key line {number} does not match its checksum {check}: retype this line"),
            ));
        }
        let bytes =
            base32_decode(&chars).map_err(|e| err(text_line, format!("key line {number}: {e}")))?;
        blob.extend_from_slice(&bytes);
        if blob.len() > MAX_PAPER_BYTES {
            return Err(err(
                text_line,
                "more key data than any key file holds".into(),
            ));
        }
        expected_line += 1;
    }
    let (line, sum) =
        whole.ok_or_else(|| err(0, "the final 'key checksum:' line is missing".into()))?;
    if blob.is_empty() {
        return Err(err(0, "no key lines found".into()));
    }
    if check_chars(WHOLE_CHECK_CONTEXT, &[], &blob, 8) != sum {
        return Err(err(
            line,
            "every line checks but the whole key does not: a line is missing at the end, or the key checksum was mistyped".into(),
        ));
    }
    Ok(blob)
}
