//! Tape-to-tape copies: `tapevault copy` duplicates restore points from one pool into
//! another (an offsite set, a second library's pool), and a pool's `copy_to` has every
//! backup session duplicated at its end.
//!
//! A copy is an image row of its own whose `copy_of` names the original (catalog
//! schema 3), written as its own tape files whose image header carries the original's
//! UUID (format 1.1, FORMAT.md 4.2): same disk, point in time, kind, parent and
//! extents, its own cartridges, pool, key and content digest. It stands for the
//! original in every chain: restore, verify and the pull list read whichever of the
//! original and its copies is complete and in the library ([`choose`]), and say which.
//!
//! A copy, step by step:
//!
//! 1. **Select** ([`select`]): the restore points asked for, less those already copied
//!    to the target pool; points that cannot be restored are refused with the reason.
//! 2. **Read** ([`stream`]): each point from its original or a copy in the library,
//!    whole, every record checked, on a drive of its own (streaming to the writer
//!    through a bounded channel) or, with one drive, into a bounded spool ([`spool`]).
//! 3. **Write** (`write.rs`): the records as they were (same extents, same order),
//!    compressed and encrypted under the target pool's policy (its key, fresh nonces)
//!    by the backup's pipeline ([`crate::backup::ImageTarget`]), spanning as needed.
//! 4. **Commit**: only when the source read was whole and its digest matched, the copy's
//!    trailer is on tape and flushed, and the digest of what was written equals the
//!    original's (same key or both clear) or was computed over exactly the bytes whose
//!    digest matched the original's (different keys): then one catalog transaction
//!    makes the copy complete. Anything else leaves the copy failed and never counted;
//!    the source is only read.

mod choose;
mod report;
pub mod select;
pub mod spool;
pub mod stream;
mod write;

pub use choose::{choose, Chosen};
pub use report::{CopiedImage, CopyReport};
pub use select::{select, Refused, Selected, Selection};
pub use spool::{parse_size, Spool};
pub use write::{run, source_keys, sources, CopyRequest};
