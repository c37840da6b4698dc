//! Writes to a server over TLS arrive whole. rustls takes plaintext and returns before the
//! records it made have left when the transport is full, and keeps them until the next write
//! or a flush; a last write of a message (a large `Bind`, then nothing until the answer) could
//! stay there, with the server waiting for the rest and the client for the answer.
//! `credswap::pool::raw::send`, which every write to a server goes through, flushes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

const TOTAL: usize = 1 << 20;

/// A TLS client and server over an in-memory pipe of 4 KiB, so the pipe is full whenever the
/// writer is faster than the reader.
async fn tls_pair() -> (
    tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
) {
    let pki = support::pg::pki();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.ca_cert()).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client_io, server_io) = tokio::io::duplex(4096);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let (c, s) = tokio::join!(
        connector.connect("localhost".try_into().unwrap(), client_io),
        acceptor.accept(server_io)
    );
    (c.unwrap(), s.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_full_tls_transport_arrives_whole() {
    let (mut client, mut server) = tls_pair().await;
    let reader = tokio::spawn(async move {
        let (mut got, mut buf) = (0, vec![0u8; 4096]);
        while got < TOTAL {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
        }
        got
    });
    credswap::pool::raw::send(&mut client, &vec![7u8; TOTAL])
        .await
        .unwrap();
    // Nothing more is written, and the client stays open: every byte must arrive anyway.
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the end of the write never left the client")
        .unwrap();
    assert_eq!(got, TOTAL);
    drop(client);
}
