//! Certificates made by a test (rcgen): a CA, a server certificate for `localhost` and
//! 127.0.0.1, client certificates (valid, expired, from another CA), as PEM files in a
//! directory of their own.
//!
//! Included by a test file with `#[path = "common/pki.rs"] mod pki;`.
#![allow(dead_code)]

use std::path::PathBuf;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};

/// A directory of PEM files for one test, removed when dropped.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for `localhost` and 127.0.0.1, client certificates for alice
    /// (valid and expired), and one for alice signed by another CA.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tej-hub-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let pki = Pki { dir };
        let ca = pki.ca("ca", "tej-hub test CA");
        pki.leaf(
            &ca,
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
            false,
        );
        pki.leaf(&ca, "alice", "alice", &[], false);
        pki.leaf(&ca, "mallory", "mallory", &[], false);
        pki.leaf(&ca, "alice-expired", "alice", &[], true);
        let other = pki.ca("other-ca", "another CA");
        pki.leaf(&other, "alice-other", "alice", &[], false);
        pki
    }

    /// The file `name` of this test's PKI (`ca.pem`, `server.pem`, `server.key`, `alice.pem`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self, file: &str, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        std::fs::write(self.path(&format!("{file}.pem")), ca.pem()).expect("write the CA");
        ca
    }

    fn leaf(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        file: &str,
        common_name: &str,
        names: &[&str],
        expired: bool,
    ) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, ca).expect("a signed certificate");
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).expect("write a cert");
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem())
            .expect("write a key");
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
