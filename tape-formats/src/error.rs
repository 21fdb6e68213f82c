use thiserror::Error;

/// Why a block could not be encoded or decoded. Every variant names the field or
/// check that failed; none of them is ever produced by a panic path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error(
        "block is {len} bytes, shorter than the {min}-byte block prefix: not a tapevault block"
    )]
    TooShort { len: usize, min: usize },
    #[error("bad magic {found:02x?}: not a tapevault block (or the block start is damaged)")]
    BadMagic { found: [u8; 8] },
    #[error(
        "block has format version {found_major}.{found_minor}; this reader supports majors {oldest_major} \
         to {supported_major} (up to {supported_major}.{supported_minor}): use a newer tapevault to read it"
    )]
    UnsupportedVersion {
        found_major: u16,
        found_minor: u16,
        oldest_major: u16,
        supported_major: u16,
        supported_minor: u16,
    },
    #[error("block is {len} bytes, larger than the {max}-byte maximum block size")]
    BlockTooLarge { len: usize, max: usize },
    #[error("block length {block_len} does not match header length {header_len} + payload length {payload_len}")]
    LengthMismatch {
        header_len: usize,
        payload_len: usize,
        block_len: usize,
    },
    #[error("header length {header_len} is invalid (must be at least {min} and cover the extension area of {ext_len} bytes)")]
    BadHeaderLength {
        header_len: usize,
        ext_len: usize,
        min: usize,
    },
    #[error(
        "header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}: header is corrupt"
    )]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("payload CRC mismatch: stored {stored:#010x}, computed {computed:#010x}: payload is corrupt")]
    PayloadCrc { stored: u32, computed: u32 },
    #[error("unknown record type {record_type:#06x} in a block of format version 1.{minor}")]
    UnknownRecordType { record_type: u16, minor: u16 },
    #[error("{record}: field {field} is truncated")]
    Truncated {
        record: &'static str,
        field: &'static str,
    },
    #[error("{record}: {extra} unexpected bytes after the last field")]
    TrailingBytes { record: &'static str, extra: usize },
    #[error("{record}: field {field} is {value}, over the limit {max}")]
    LimitExceeded {
        record: &'static str,
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{record}: field {field} has invalid value {value}")]
    InvalidValue {
        record: &'static str,
        field: &'static str,
        value: u64,
    },
    #[error("{record}: field {field} is not valid UTF-8")]
    InvalidUtf8 {
        record: &'static str,
        field: &'static str,
    },
    #[error("{record}: {reason}")]
    Inconsistent {
        record: &'static str,
        reason: &'static str,
    },
    #[error("{record}: extent {index} is invalid: {reason}")]
    BadExtent {
        record: &'static str,
        index: usize,
        reason: &'static str,
    },
    #[error("malformed extension area: {reason}")]
    BadExtension { reason: &'static str },
    #[error("{record} must not carry a payload, found {len} bytes")]
    UnexpectedPayload { record: &'static str, len: usize },
}
