//! Test certificates for `parley sim --tls-cert/--tls-key` (scripts/bench-client.sh's TLS cases,
//! or trying https by hand), made with rcgen: no network, no openssl.
//!
//!     cargo run --release --example gen-test-cert -- DIR [NAME...]
//!
//! writes `DIR/ca.pem` (a CA to pass to `parley bench --ca-cert`), `DIR/server.pem` and
//! `DIR/server.key` (a certificate that CA signed, for each NAME — DNS names or IP addresses;
//! default `localhost 127.0.0.1` — and its key). For tests only: the CA's key is thrown away.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: gen-test-cert DIR [NAME...] (default names: localhost 127.0.0.1)")?,
    );
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "parley test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.clone())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "parley test server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.pem"), ca_pem)?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    println!(
        "wrote {0}/ca.pem, {0}/server.pem and {0}/server.key for {1}",
        dir.display(),
        names.join(", ")
    );
    Ok(())
}
