//! Authentication and TLS against real nats-server processes started by the test: token,
//! NKey, TLS with a CA the test generates, and mutual TLS. nats-server and openssl must be
//! installed (`tests/harness/setup.sh` installs nats-server); a missing one fails the test.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use polybus::{Bus, Config, ErrorKind, Event, Message, SubscribeOptions};

/// A nats-server on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/test-tmp");
        let dir = root.join(format!("{tag}-{}-{:?}", std::process::id(), Instant::now()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(tag: &str, config: impl FnOnce(&Path) -> String) -> Server {
    let dir = TempDir::new(tag);
    let port = free_port();
    let conf = dir.0.join("server.conf");
    let body = format!("listen: 127.0.0.1:{port}\n{}", config(&dir.0));
    std::fs::write(&conf, body).unwrap();
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (bash tests/harness/setup.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server ({tag}) did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a port that is not open yet
    }
    Server {
        child,
        port,
        _dir: dir,
    }
}

fn config(server: &Server, nats: serde_json::Value) -> Config {
    let text = serde_json::json!({
        "url": format!("nats://127.0.0.1:{}", server.port),
        "connect_timeout_ms": 3000,
        "nats": nats,
    });
    Config::parse(&text.to_string()).expect("valid config")
}

/// Connects, then proves the connection works with a publish/subscribe round trip.
async fn round_trip(cfg: Config) -> polybus::Result<()> {
    let bus = Bus::connect(cfg).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .subscribe("auth.check", SubscribeOptions::new(), move |e: Event| {
            let tx = tx.clone();
            async move { tx.send(e.payload().clone()).map_err(|_| "receiver gone") }
        })
        .await?;
    bus.publish(Message::new("auth.check", "ok")).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(got.expect("the event did not arrive").unwrap(), "ok");
    bus.close().await
}

#[tokio::test]
async fn token_authentication() {
    let server = start("token", |_| {
        "authorization { token: \"s3cret-token\" }\n".into()
    });
    round_trip(config(
        &server,
        serde_json::json!({"token": "s3cret-token"}),
    ))
    .await
    .unwrap();
    let err = round_trip(config(&server, serde_json::json!({"token": "wrong"})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the token must not be shown: {err}"
    );
}

#[tokio::test]
async fn nkey_authentication() {
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let seed = user.seed().unwrap();
    let server = start("nkey", move |_| {
        format!("authorization {{ users: [ {{ nkey: {public} }} ] }}\n")
    });
    round_trip(config(&server, serde_json::json!({"nkey_seed": seed})))
        .await
        .unwrap();
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let err = round_trip(config(&server, serde_json::json!({"nkey_seed": other})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certs(dir: &Path) {
    let run = |args: &str| {
        let ok = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(ok.success(), "openssl {args} failed");
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "[server]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=polybus-test-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
         -keyout ca-key.pem -out ca.pem",
    );
    for who in ["server", "client"] {
        run(&format!(
            "req -newkey rsa:2048 -nodes -subj /CN=polybus-test-{who} -keyout {who}-key.pem \
             -out {who}.csr"
        ));
        run(&format!(
            "x509 -req -in {who}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
             -extfile ext.cnf -extensions {who} -out {who}.pem"
        ));
    }
}

fn pem(server_dir: &Path, name: &str) -> String {
    server_dir.join(name).display().to_string()
}

#[tokio::test]
async fn tls_with_a_private_ca_and_mutual_tls() {
    let server = start("tls", |dir| {
        make_certs(dir);
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n",
            pem(dir, "server.pem"),
            pem(dir, "server-key.pem"),
            pem(dir, "ca.pem")
        )
    });
    let dir = server._dir.0.clone();
    let mutual = serde_json::json!({
        "tls_required": true,
        "tls_ca": pem(&dir, "ca.pem"),
        "tls_cert": pem(&dir, "client.pem"),
        "tls_key": pem(&dir, "client-key.pem"),
    });
    round_trip(config(&server, mutual)).await.unwrap();
    // Without a client certificate the server refuses the connection.
    let no_cert = serde_json::json!({"tls_required": true, "tls_ca": pem(&dir, "ca.pem")});
    let err = round_trip(config(&server, no_cert)).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connection | ErrorKind::Auth | ErrorKind::Timeout
        ),
        "{err}"
    );
    // Without the CA the server's certificate is not trusted.
    let untrusted = serde_json::json!({
        "tls_required": true,
        "tls_cert": pem(&dir, "client.pem"),
        "tls_key": pem(&dir, "client-key.pem"),
    });
    let err = round_trip(config(&server, untrusted)).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
}

/// Base64url without padding, as JWTs encode their parts.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) for `subject` with the `nats` claims, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("POLYBUS{}X{id}", std::process::id()),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let signed = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// An account JWT without limits, signed by the operator.
fn account_jwt(operator: &nkeys::KeyPair, account: &nkeys::KeyPair) -> String {
    let limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let claims = serde_json::json!({"type": "account", "version": 2, "limits": limits});
    nats_jwt(operator, &account.public_key(), claims)
}

/// A `.creds` file for a new user whose JWT is signed by `account`.
fn write_creds(path: &Path, account: &nkeys::KeyPair) {
    let user = nkeys::KeyPair::new_user();
    let claims = serde_json::json!({
        "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
    });
    let jwt = nats_jwt(account, &user.public_key(), claims);
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    std::fs::write(path, creds).unwrap();
}

#[tokio::test]
async fn creds_file_authentication() {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let server = start("creds", |dir| {
        let operator_claims = serde_json::json!({
            "type": "operator", "version": 2, "system_account": system.public_key(),
        });
        let operator_jwt = nats_jwt(&operator, &operator.public_key(), operator_claims);
        write_creds(&dir.join("user.creds"), &account);
        // A user of an account the operator never signed.
        write_creds(&dir.join("stranger.creds"), &nkeys::KeyPair::new_account());
        format!(
            "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            system.public_key(),
            system.public_key(),
            account_jwt(&operator, &system),
            account.public_key(),
            account_jwt(&operator, &account),
        )
    });
    let dir = server._dir.0.clone();
    let creds = |name: &str| serde_json::json!({"creds_file": pem(&dir, name)});
    round_trip(config(&server, creds("user.creds")))
        .await
        .unwrap();
    let err = round_trip(config(&server, creds("stranger.creds")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let err = round_trip(config(&server, creds("missing.creds")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
}
