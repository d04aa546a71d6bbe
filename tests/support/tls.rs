//! Certificates for TLS tests, made by `openssl` in a directory of the test's own: a certificate
//! authority, a server certificate for 127.0.0.1 and a client certificate it signed, and a second
//! authority that signed nothing the server has; and a redis-server that listens for TLS with them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::RedisServer;
use super::redis_server::free_port;

/// The certificate and key files of one test, removed when dropped.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    dir: PathBuf,
    pub(crate) authority: PathBuf,
    pub(crate) server_certificate: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_certificate: PathBuf,
    pub(crate) client_key: PathBuf,
    /// An authority the server's certificate does not come from.
    pub(crate) other_authority: PathBuf,
}

impl TlsFiles {
    /// The arguments of a redis-server listening for TLS on `port` with these certificates,
    /// asking clients for theirs if `client_certificates`, and talking TLS to other cluster
    /// nodes if `cluster`.
    pub(crate) fn server_args(
        &self,
        port: u16,
        client_certificates: bool,
        cluster: bool,
    ) -> Vec<String> {
        let mut args = vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.server_certificate),
            "--tls-key-file".into(),
            path(&self.server_key),
            "--tls-ca-cert-file".into(),
            path(&self.authority),
            "--tls-auth-clients".into(),
            (if client_certificates { "yes" } else { "no" }).into(),
        ];
        if cluster {
            args.extend(["--tls-cluster".into(), "yes".into()]);
        }
        args
    }

    /// Makes a fresh set with `openssl`.
    pub(crate) fn make() -> Self {
        let dir = std::env::temp_dir().join(super::unique("events-tls"));
        std::fs::create_dir_all(&dir).expect("a directory for certificates");
        let file = |name: &str| dir.join(name);
        let files = Self {
            authority: file("ca.crt"),
            server_certificate: file("server.crt"),
            server_key: file("server.key"),
            client_certificate: file("client.crt"),
            client_key: file("client.key"),
            other_authority: file("other-ca.crt"),
            dir: dir.clone(),
        };
        for name in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=events test {name}"),
                "-keyout",
                &path(&file(&format!("{name}.key"))),
                "-out",
                &path(&file(&format!("{name}.crt"))),
            ]);
        }
        std::fs::write(
            file("server.ext"),
            // Cluster nodes present it to each other as clients too.
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write extensions");
        std::fs::write(file("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("write extensions");
        for name in ["server", "client"] {
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN=events test {name}"),
                "-keyout",
                &path(&file(&format!("{name}.key"))),
                "-out",
                &path(&file(&format!("{name}.csr"))),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &path(&file(&format!("{name}.csr"))),
                "-CA",
                &path(&files.authority),
                "-CAkey",
                &path(&file("ca.key")),
                "-CAcreateserial",
                "-extfile",
                &path(&file(&format!("{name}.ext"))),
                "-out",
                &path(&file(&format!("{name}.crt"))),
            ]);
        }
        files
    }

    /// The contents of `file`.
    pub(crate) fn read(file: &Path) -> Vec<u8> {
        std::fs::read(file).expect("read a certificate file")
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(file: &Path) -> String {
    file.display().to_string()
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| match error.kind() {
            io::ErrorKind::NotFound => {
                panic!("openssl is not on PATH: install it (Debian: openssl)")
            }
            _ => panic!("could not run openssl: {error}"),
        });
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TlsFiles {
    /// A cluster whose nodes also listen for TLS with these certificates, and talk TLS to each
    /// other; its `tls_url` names their TLS ports.
    pub(crate) fn cluster(&self) -> events::testing::RedisCluster {
        events::testing::RedisCluster::start_with(|tls_port| {
            self.server_args(tls_port, false, true)
        })
    }

    /// A server of this process's own that also listens for TLS, with these certificates; it
    /// asks clients for theirs when `client_certificates`. Its URL is the TLS port's
    /// (`rediss://127.0.0.1:<port>`); `plain_url` is the other.
    pub(crate) fn server(&self, client_certificates: bool) -> RedisServer {
        let tls = self;
        RedisServer::spawn_with(|_| {
            let port = free_port().expect("a free port");
            (
                tls.server_args(port, client_certificates, false),
                Some(port),
            )
        })
        .unwrap_or_else(|error| panic!("could not start redis-server with TLS: {error}"))
    }
}
