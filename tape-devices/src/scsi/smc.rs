//! SMC-3 data layouts: the element address assignment mode page (0x1D) and READ ELEMENT
//! STATUS data.

/// SMC element type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    Transport = 1,
    Storage = 2,
    ImportExport = 3,
    DataTransfer = 4,
}

impl ElementType {
    pub fn from_u8(v: u8) -> Option<ElementType> {
        Some(match v {
            1 => ElementType::Transport,
            2 => ElementType::Storage,
            3 => ElementType::ImportExport,
            4 => ElementType::DataTransfer,
            _ => return None,
        })
    }
}

/// First address and count of each kind of element (mode page 0x1D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressAssignment {
    pub transport: (u16, u16),
    pub storage: (u16, u16),
    pub import_export: (u16, u16),
    pub data_transfer: (u16, u16),
}

/// Mode page code of the element address assignment page.
pub const ELEMENT_ADDRESS_PAGE: u8 = 0x1d;

/// Parse MODE SENSE(6) data holding page 0x1D (with or without block descriptors).
pub fn parse_address_assignment(b: &[u8]) -> Result<AddressAssignment, String> {
    if b.len() < 4 {
        return Err(format!("mode sense data too short ({} bytes)", b.len()));
    }
    let p = 4 + b[3] as usize;
    let page = b
        .get(p..p + 18)
        .ok_or_else(|| format!("mode page 0x1D truncated ({} bytes of data)", b.len()))?;
    if page[0] & 0x3f != ELEMENT_ADDRESS_PAGE {
        return Err(format!(
            "expected mode page 0x1D, got 0x{:02x}",
            page[0] & 0x3f
        ));
    }
    let w = |i: usize| u16::from_be_bytes([page[i], page[i + 1]]);
    Ok(AddressAssignment {
        transport: (w(2), w(4)),
        storage: (w(6), w(8)),
        import_export: (w(10), w(12)),
        data_transfer: (w(14), w(16)),
    })
}

/// One element descriptor of READ ELEMENT STATUS data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementStatus {
    pub element_type: ElementType,
    pub address: u16,
    pub full: bool,
    pub except: bool,
    /// Additional sense code/qualifier of an element in the exception state.
    pub asc_ascq: (u8, u8),
    /// Source element address when SVALID.
    pub source: Option<u16>,
    /// Primary volume tag (barcode), trailing blanks removed; None when not reported.
    pub volume_tag: Option<String>,
}

/// Largest element-status reply we accept (bytes); a 24-bit allocation length allows
/// 16 MiB but even large libraries need far less.
pub const MAX_ELEMENT_STATUS_LEN: usize = 1 << 20;

/// Parse READ ELEMENT STATUS data (SMC-3 6.10.2 to 6.10.4).
pub fn parse_element_status(b: &[u8]) -> Result<Vec<ElementStatus>, String> {
    if b.len() < 8 {
        return Err(format!(
            "element status header truncated ({} bytes)",
            b.len()
        ));
    }
    let report = u32::from_be_bytes([0, b[5], b[6], b[7]]) as usize;
    let end = (8 + report).min(b.len());
    let mut out = Vec::new();
    let mut p = 8;
    while p + 8 <= end {
        let ty_code = b[p] & 0x0f;
        let pvoltag = b[p + 1] & 0x80 != 0;
        let avoltag = b[p + 1] & 0x40 != 0;
        let dlen = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
        let page_bytes = u32::from_be_bytes([0, b[p + 5], b[p + 6], b[p + 7]]) as usize;
        let ty = ElementType::from_u8(ty_code)
            .ok_or_else(|| format!("unknown element type code {ty_code} at byte {p}"))?;
        let min_len = 12 + if pvoltag { 36 } else { 0 } + if avoltag { 36 } else { 0 };
        if dlen < 12 || dlen < min_len {
            return Err(format!(
                "element descriptor length {dlen} too short at byte {p}"
            ));
        }
        let page_end = (p + 8 + page_bytes).min(end);
        let mut d = p + 8;
        while d + dlen <= page_end {
            let e = &b[d..d + dlen];
            let flags = e[2];
            let svalid = e[9] & 0x80 != 0;
            let volume_tag = pvoltag.then(|| {
                String::from_utf8_lossy(&e[12..44])
                    .trim_end_matches([' ', '\0'])
                    .to_string()
            });
            out.push(ElementStatus {
                element_type: ty,
                address: u16::from_be_bytes([e[0], e[1]]),
                full: flags & 0x01 != 0,
                except: flags & 0x04 != 0,
                asc_ascq: (e[4], e[5]),
                source: svalid.then(|| u16::from_be_bytes([e[10], e[11]])),
                volume_tag,
            });
            d += dlen;
        }
        p = page_end.max(p + 8);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One element for [`element_status_bytes`]: address, volume tag (None: empty),
    /// source address.
    pub type TestElement<'a> = (u16, Option<&'a str>, Option<u16>);

    /// Build a READ ELEMENT STATUS reply by hand, as SMC-3 lays it out: one page per
    /// element type; each descriptor 12 bytes + a 36-byte primary volume tag.
    pub fn element_status_bytes(pages: &[(u8, Vec<TestElement>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut count = 0u16;
        for (ty, elems) in pages {
            let dlen = 12 + 36;
            let mut page = vec![*ty, 0x80, 0, dlen as u8, 0];
            let bytes = (elems.len() * dlen) as u32;
            page.extend_from_slice(&bytes.to_be_bytes()[1..]);
            for (addr, tag, src) in elems {
                let mut e = vec![0u8; dlen];
                e[0..2].copy_from_slice(&addr.to_be_bytes());
                e[2] = if tag.is_some() { 0x01 } else { 0 } | 0x08;
                if let Some(s) = src {
                    e[9] = 0x80;
                    e[10..12].copy_from_slice(&s.to_be_bytes());
                }
                let t = tag.unwrap_or("");
                e[12..44].fill(b' ');
                e[12..12 + t.len()].copy_from_slice(t.as_bytes());
                page.extend_from_slice(&e);
                count += 1;
            }
            body.extend_from_slice(&page);
        }
        let first = pages
            .first()
            .and_then(|p| p.1.first())
            .map(|e| e.0)
            .unwrap_or(0);
        let mut out = Vec::new();
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.push(0);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_a_hand_made_inventory() {
        let b = element_status_bytes(&[
            (
                4,
                vec![(0x100, Some("TV0001L6"), Some(0x1000)), (0x101, None, None)],
            ),
            (
                2,
                vec![(0x1000, None, None), (0x1001, Some("TV0002L6"), None)],
            ),
        ]);
        let els = parse_element_status(&b).unwrap();
        assert_eq!(els.len(), 4);
        assert_eq!(els[0].element_type, ElementType::DataTransfer);
        assert_eq!(els[0].volume_tag.as_deref(), Some("TV0001L6"));
        assert_eq!(els[0].source, Some(0x1000));
        assert!(els[0].full && !els[1].full);
        assert_eq!(els[3].address, 0x1001);
        assert_eq!(els[3].volume_tag.as_deref(), Some("TV0002L6"));
    }

    #[test]
    fn address_assignment_page_as_tgt_reports_it() {
        // Captured from tgt: MODE SENSE(6) DBD page 0x1D.
        let b = [
            0x17, 0, 0, 0, 0x1d, 0x12, 0, 1, 0, 1, 0x10, 0, 0, 8, 0, 0x10, 0, 1, 1, 0, 0, 2, 0, 0,
        ];
        let a = parse_address_assignment(&b).unwrap();
        assert_eq!(a.transport, (1, 1));
        assert_eq!(a.storage, (0x1000, 8));
        assert_eq!(a.import_export, (0x10, 1));
        assert_eq!(a.data_transfer, (0x100, 2));
        assert!(parse_address_assignment(&b[..10]).is_err());
    }

    #[test]
    fn truncated_or_inconsistent_replies_are_errors_not_panics() {
        assert!(parse_element_status(&[0; 4]).is_err());
        let mut b = element_status_bytes(&[(2, vec![(0x1000, Some("A"), None)])]);
        b[8] = 9; // unknown element type
        assert!(parse_element_status(&b).is_err());
        let mut b = element_status_bytes(&[(2, vec![(0x1000, Some("A"), None)])]);
        b[8 + 3] = 4; // descriptor shorter than the fixed part
        assert!(parse_element_status(&b).is_err());
        // byte count larger than the buffer: parse what is there
        let mut b = element_status_bytes(&[(2, vec![(0x1000, Some("A"), None)])]);
        b[7] = 0xff;
        assert_eq!(parse_element_status(&b).unwrap().len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_element_status(&b);
            let _ = parse_address_assignment(&b);
        }
    }
}
