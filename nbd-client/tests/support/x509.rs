//! Test certificates in QEMU's x509 layout (shared by nbd-client's and tapevault's
//! NBD-over-TLS tests): a CA, a server and a client certificate for `localhost` and
//! 127.0.0.1, and a second, unrelated CA.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes, in `dir`: `srv/` (ca-cert.pem, server-cert.pem, server-key.pem) for
/// `qemu-nbd --object tls-creds-x509,dir=...,endpoint=server`, `cli/` (ca-cert.pem,
/// client-cert.pem, client-key.pem) for a client, and `other/ca-cert.pem`, a CA that
/// signed neither. False (and the reason printed) without openssl.
pub fn make_qemu_x509(dir: &Path) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipping: openssl is not installed (needed to make test certificates)");
        return false;
    }
    let ossl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    let ca = |name: &str| {
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
    };
    ca("ca");
    ca("otherca");
    for (role, eku) in [("server", "serverAuth"), ("client", "clientAuth")] {
        ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{role}-key.pem"),
            "-out",
            &format!("{role}.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join(format!("{role}.ext")),
            format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n"
            ),
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            &format!("{role}.csr"),
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &format!("{role}-cert.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{role}.ext"),
        ]);
    }
    for (sub, files) in [
        ("srv", ["ca-cert.pem", "server-cert.pem", "server-key.pem"]),
        ("cli", ["ca-cert.pem", "client-cert.pem", "client-key.pem"]),
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for f in files {
            std::fs::copy(dir.join(f), dir.join(sub).join(f)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("other")).unwrap();
    std::fs::copy(dir.join("otherca-cert.pem"), dir.join("other/ca-cert.pem")).unwrap();
    true
}
