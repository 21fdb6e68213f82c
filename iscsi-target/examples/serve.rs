//! Serve a library directory until Ctrl-C / SIGTERM kills the process:
//! `cargo run -p iscsi-target --example serve -- LIBRARY_DIR [ADDR]`.
//! (Creates a small library there first if none exists.)

use iscsi_target::{Target, TargetConfig};
use vtl_sim::{Library, LibraryConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: serve LIBRARY_DIR [127.0.0.1:3260]");
        std::process::exit(2);
    };
    if !Library::exists(dir.as_ref()) {
        let cfg = LibraryConfig {
            slots: 4,
            drives: 2,
            mail_slots: 1,
            cartridges: 3,
            capacity: 256 << 20,
            early_warning: 8 << 20,
        };
        if let Err(e) = Library::create(dir.as_ref(), &cfg) {
            eprintln!("cannot create a library in {dir}: {e}");
            std::process::exit(1);
        }
    }
    let mut cfg = TargetConfig::new(&dir);
    if let Some(a) = args.next() {
        match a.parse() {
            Ok(a) => cfg.listen = a,
            Err(e) => {
                eprintln!("bad listen address {a}: {e}");
                std::process::exit(2);
            }
        }
    }
    cfg.log = Some(std::sync::Arc::new(|m: &str| eprintln!("{m}")));
    let h = match Target::serve(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("serving {} on {}", h.target_name(), h.local_addr());
    loop {
        std::thread::park();
    }
}
