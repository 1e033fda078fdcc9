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
