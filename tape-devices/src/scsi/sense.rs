//! SCSI sense data (SPC-4 4.5): fixed (0x70/0x71) and descriptor (0x72/0x73) formats.

use std::fmt;

/// Sense keys (SPC-4 table 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum SenseKey {
    #[default]
    NoSense,
    RecoveredError,
    NotReady,
    MediumError,
    HardwareError,
    IllegalRequest,
    UnitAttention,
    DataProtect,
    BlankCheck,
    VendorSpecific,
    CopyAborted,
    AbortedCommand,
    VolumeOverflow,
    Miscompare,
    Reserved(u8),
}

impl SenseKey {
    pub fn from_u8(v: u8) -> SenseKey {
        match v & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xa => SenseKey::CopyAborted,
            0xb => SenseKey::AbortedCommand,
            0xd => SenseKey::VolumeOverflow,
            0xe => SenseKey::Miscompare,
            other => SenseKey::Reserved(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SenseKey::NoSense => "no sense",
            SenseKey::RecoveredError => "recovered error",
            SenseKey::NotReady => "not ready",
            SenseKey::MediumError => "medium error",
            SenseKey::HardwareError => "hardware error",
            SenseKey::IllegalRequest => "illegal request",
            SenseKey::UnitAttention => "unit attention",
            SenseKey::DataProtect => "data protect",
            SenseKey::BlankCheck => "blank check",
            SenseKey::VendorSpecific => "vendor specific",
            SenseKey::CopyAborted => "copy aborted",
            SenseKey::AbortedCommand => "aborted command",
            SenseKey::VolumeOverflow => "volume overflow",
            SenseKey::Miscompare => "miscompare",
            SenseKey::Reserved(_) => "reserved sense key",
        }
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// Stream-command bits (SSC): a filemark was read, end of medium (early warning or
    /// the physical end), incorrect length.
    pub filemark: bool,
    pub eom: bool,
    pub ili: bool,
    /// The INFORMATION field when valid (residual count for tape commands).
    pub information: Option<u64>,
    /// Deferred error (response code 0x71/0x73): about an earlier command.
    pub deferred: bool,
}

/// Shortest sense buffer that carries a sense key.
const MIN_FIXED_LEN: usize = 3;

impl Sense {
    /// Decode sense bytes; None when the buffer holds no recognizable sense data.
    pub fn parse(b: &[u8]) -> Option<Sense> {
        let code = *b.first()? & 0x7f;
        match code {
            0x70 | 0x71 => {
                if b.len() < MIN_FIXED_LEN {
                    return None;
                }
                let valid = b[0] & 0x80 != 0;
                let at = |i: usize| b.get(i).copied().unwrap_or(0);
                let info = u32::from_be_bytes([at(3), at(4), at(5), at(6)]) as u64;
                Some(Sense {
                    key: SenseKey::from_u8(b[2]),
                    asc: at(12),
                    ascq: at(13),
                    filemark: b[2] & 0x80 != 0,
                    eom: b[2] & 0x40 != 0,
                    ili: b[2] & 0x20 != 0,
                    information: valid.then_some(info),
                    deferred: code == 0x71,
                })
            }
            0x72 | 0x73 => {
                if b.len() < 4 {
                    return None;
                }
                let mut s = Sense {
                    key: SenseKey::from_u8(b[1]),
                    asc: b[2],
                    ascq: b[3],
                    deferred: code == 0x73,
                    ..Sense::default()
                };
                let add_len = b.get(7).copied().unwrap_or(0) as usize;
                let end = (8 + add_len).min(b.len());
                let mut i = 8;
                while i + 2 <= end {
                    let ty = b[i];
                    let len = b[i + 1] as usize;
                    let d = &b[i..(i + 2 + len).min(end)];
                    match ty {
                        // Information descriptor: VALID bit, 8-byte INFORMATION.
                        0x00 if d.len() >= 12 && d[2] & 0x80 != 0 => {
                            s.information = Some(u64::from_be_bytes(d[4..12].try_into().ok()?));
                        }
                        // Stream commands descriptor (SSC).
                        0x04 if d.len() >= 4 => {
                            s.filemark = d[3] & 0x80 != 0;
                            s.eom = d[3] & 0x40 != 0;
                            s.ili = d[3] & 0x20 != 0;
                        }
                        _ => {}
                    }
                    i += 2 + len;
                }
                Some(s)
            }
            _ => None,
        }
    }

    /// True when the sense reports anything beyond "no sense".
    pub fn has_condition(&self) -> bool {
        self.key != SenseKey::NoSense
            || self.asc != 0
            || self.ascq != 0
            || self.filemark
            || self.eom
            || self.ili
    }

    /// End of data / blank medium: BLANK CHECK, or the EOD-detected and
    /// end-of-data-not-found codes some devices use with other sense keys.
    pub fn is_end_of_data(&self) -> bool {
        self.key == SenseKey::BlankCheck
            || matches!((self.asc, self.ascq), (0x00, 0x05) | (0x14, 0x03))
    }

    /// ILLEGAL REQUEST, invalid command operation code / field in CDB for an optional
    /// command: the device lacks the feature.
    pub fn is_unsupported_command(&self) -> bool {
        self.key == SenseKey::IllegalRequest && (self.asc == 0x20 && self.ascq == 0x00)
    }

    /// A text for ASC/ASCQ (the common tape and changer ones; SPC-4 annex D).
    pub fn asc_text(&self) -> Option<&'static str> {
        Some(match (self.asc, self.ascq) {
            (0x00, 0x00) => "no additional sense information",
            (0x00, 0x01) => "filemark detected",
            (0x00, 0x02) => "end-of-partition/medium detected",
            (0x00, 0x04) => "beginning-of-partition/medium detected",
            (0x00, 0x05) => "end-of-data detected",
            (0x00, 0x07) => "programmable early warning detected",
            (0x03, 0x02) => "excessive write errors",
            (0x04, 0x00) => "logical unit not ready, cause not reportable",
            (0x04, 0x01) => "logical unit is in process of becoming ready",
            (0x04, 0x02) => "logical unit not ready, initializing command required",
            (0x04, 0x03) => "logical unit not ready, manual intervention required",
            (0x0c, 0x00) => "write error",
            (0x11, 0x00) => "unrecovered read error",
            (0x14, 0x00) => "recorded entity not found",
            (0x14, 0x03) => "end-of-data not found",
            (0x1a, 0x00) => "parameter list length error",
            (0x20, 0x00) => "invalid command operation code",
            (0x21, 0x01) => "invalid element address",
            (0x24, 0x00) => "invalid field in CDB",
            (0x25, 0x00) => "logical unit not supported",
            (0x26, 0x00) => "invalid field in parameter list",
            (0x27, 0x00) => "write protected",
            (0x28, 0x00) => "not ready to ready change, medium may have changed",
            (0x29, 0x00) => "power on, reset, or bus device reset occurred",
            (0x30, 0x00) => "incompatible medium installed",
            (0x30, 0x03) => "cleaning cartridge installed",
            (0x3a, 0x00) => "medium not present",
            (0x3b, 0x00) => "sequential positioning error",
            (0x3b, 0x0d) => "medium destination element full",
            (0x3b, 0x0e) => "medium source element empty",
            (0x3b, 0x11) => "medium magazine not accessible",
            (0x3b, 0x12) => "medium magazine removed",
            (0x3f, 0x00) => "target operating conditions have changed",
            (0x44, 0x00) => "internal target failure",
            (0x50, 0x00) => "write append error",
            (0x51, 0x00) => "erase failure",
            (0x53, 0x00) => "media load or eject failed",
            (0x53, 0x02) => "medium removal prevented",
            (0x74, 0x00) => "security error",
            (0x74, 0x01) => "unable to decrypt data",
            (0x74, 0x02) => "unencrypted data encountered while decrypting",
            (0x74, 0x03) => "incorrect data encryption key",
            (0x74, 0x04) => "cryptographic integrity validation failed",
            (0x74, 0x05) => "error decrypting data",
            _ => return None,
        })
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key.name())?;
        match self.asc_text() {
            Some(t) => write!(f, ", {t}")?,
            None => write!(f, ", ASC 0x{:02x} ASCQ 0x{:02x}", self.asc, self.ascq)?,
        }
        if self.filemark {
            f.write_str(" [filemark]")?;
        }
        if self.eom {
            f.write_str(" [end of medium]")?;
        }
        if self.ili {
            f.write_str(" [incorrect length]")?;
        }
        if let Some(i) = self.information {
            write!(f, " (information {i})")?;
        }
        if self.deferred {
            f.write_str(" (deferred error)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_blank_check_with_residual() {
        // 0xf0: valid + current; key 8; information 5; ASC/ASCQ 00/05 end-of-data.
        let b = [
            0xf0, 0, 0x08, 0, 0, 0, 5, 10, 0, 0, 0, 0, 0x00, 0x05, 0, 0, 0, 0,
        ];
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::BlankCheck);
        assert_eq!(s.information, Some(5));
        assert_eq!(s.asc_text(), Some("end-of-data detected"));
        assert!(!s.filemark && !s.eom && !s.deferred);
        assert_eq!(
            s.to_string(),
            "blank check, end-of-data detected (information 5)"
        );
    }

    #[test]
    fn fixed_format_stream_bits() {
        let b = [
            0x70,
            0,
            0x80 | 0x40 | 0x20,
            0,
            0,
            0,
            0,
            10,
            0,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
        ];
        let s = Sense::parse(&b).unwrap();
        assert!(s.filemark && s.eom && s.ili);
        assert_eq!(s.information, None, "VALID bit clear");
    }

    #[test]
    fn descriptor_format_with_information_and_stream_descriptors() {
        let mut b = vec![0x72, 0x03, 0x11, 0x00, 0, 0, 0, 0];
        b.extend_from_slice(&[0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]);
        b.extend_from_slice(&[0x04, 0x02, 0, 0x40]);
        b[7] = (b.len() - 8) as u8;
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!(s.information, Some(256));
        assert!(s.eom && !s.filemark);
        assert!(s.to_string().contains("unrecovered read error"));
    }

    #[test]
    fn unsupported_command_is_recognized() {
        let b = [
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0,
        ];
        assert!(Sense::parse(&b).unwrap().is_unsupported_command());
    }

    #[test]
    fn garbage_and_truncated_sense_never_panic() {
        assert_eq!(Sense::parse(&[]), None);
        assert_eq!(Sense::parse(&[0x12, 1, 2]), None);
        assert_eq!(Sense::parse(&[0x70, 0]), None);
        // Descriptor sense whose additional length overruns the buffer.
        let s = Sense::parse(&[0x72, 0x05, 0x24, 0, 0, 0, 0, 200, 0x00, 0x0a, 0x80]).unwrap();
        assert_eq!(s.key, SenseKey::IllegalRequest);
        assert_eq!(s.information, None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Sense::parse(&b).map(|s| s.to_string());
        }
    }
}
