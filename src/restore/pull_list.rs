//! The pull list: the cartridges a job needs, in the order it reads them, with where
//! the catalog last saw each and whether the library holds it now.

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, Segment};
use crate::error::{Error, Result};

/// One cartridge a job needs, in the order it will be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PullItem {
    pub barcode: String,
    /// Where the catalog last saw it (`slot 3`, `vault:offsite`, `outside`, ...).
    pub location: String,
    /// Whether the library holds it now.
    pub in_library: bool,
    /// The images read from it.
    pub images: Vec<Uuid>,
}

/// Human lines for a pull list.
pub fn pull_list_text(list: &[PullItem]) -> String {
    let mut s = format!("cartridges needed ({}), in order:\n", list.len());
    for (i, p) in list.iter().enumerate() {
        let loc = if p.location.is_empty() {
            "unknown location"
        } else {
            &p.location
        };
        let state = if p.in_library {
            "in the library"
        } else {
            "NOT IN THE LIBRARY"
        };
        s.push_str(&format!(
            "  {}. {} ({loc}; {state}) for {} image(s)\n",
            i + 1,
            p.barcode,
            p.images.len()
        ));
    }
    s
}

/// Error (exit 4) when any cartridge of the pull list is not in the library.
pub fn check_pull_list(list: &[PullItem]) -> Result<()> {
    let missing: Vec<String> = list
        .iter()
        .filter(|p| !p.in_library)
        .map(|p| {
            if p.location.is_empty() {
                p.barcode.clone()
            } else {
                format!("{} (last known location: {})", p.barcode, p.location)
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MediaNeeded(format!(
        "{} of {} needed cartridge(s) are not in the library: {}; put them into a mail slot, run `tapevault library import` and try again",
        missing.len(),
        list.len(),
        missing.join(", ")
    )))
}

pub(super) fn build_pull_list(
    cat: &Catalog,
    present: &std::collections::HashSet<String>,
    reads: &[(Uuid, Vec<&Segment>)],
) -> Result<Vec<PullItem>> {
    let mut list: Vec<PullItem> = Vec::new();
    for (image, segs) in reads {
        for s in segs {
            let item = match list.iter_mut().position(|p| p.barcode == s.barcode) {
                Some(i) => &mut list[i],
                None => {
                    let location = cat
                        .media(&s.barcode)?
                        .map(|m| m.location)
                        .unwrap_or_default();
                    list.push(PullItem {
                        barcode: s.barcode.clone(),
                        location,
                        in_library: present.contains(&s.barcode),
                        images: Vec::new(),
                    });
                    list.last_mut().expect("just pushed")
                }
            };
            if !item.images.contains(image) {
                item.images.push(*image);
            }
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_list_names_missing_cartridges_and_their_locations() {
        let list = vec![
            PullItem {
                barcode: "A00001L9".into(),
                location: "slot 1".into(),
                in_library: true,
                images: vec![Uuid::nil()],
            },
            PullItem {
                barcode: "A00002L9".into(),
                location: "vault:offsite".into(),
                in_library: false,
                images: vec![Uuid::nil()],
            },
        ];
        let e = check_pull_list(&list).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::MediaNeeded);
        let m = e.to_string();
        assert!(m.contains("A00002L9") && m.contains("vault:offsite") && !m.contains("A00001L9"));
        let t = pull_list_text(&list);
        assert!(t.contains("1. A00001L9 (slot 1; in the library)"), "{t}");
        assert!(
            t.contains("2. A00002L9 (vault:offsite; NOT IN THE LIBRARY)"),
            "{t}"
        );
        assert!(check_pull_list(&list[..1]).is_ok());
    }
}
