//! NATS for the tests: the shared server named by `WB_NATS_URL`, and
//! private `nats-server` processes (one, or a three-node JetStream cluster)
//! on free loopback ports with temporary stores, killed on drop.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `WB_NATS_URL` (default `nats://127.0.0.1:4222`), checked to answer.
pub async fn nats_url() -> String {
    let url = std::env::var("WB_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://").to_owned();
    if TcpStream::connect_timeout(
        &addr
            .parse()
            .unwrap_or_else(|e| panic!("WB_NATS_URL={url}: {e}")),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "no NATS server answers at {url}. Set WB_NATS_URL=nats://HOST:PORT to a JetStream-enabled \
             nats-server (started with -js), or run scripts/test, which starts one on 127.0.0.1:4222"
        );
    }
    url
}

/// A name no other test run uses (stream names, instance ids).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn nats_server() -> String {
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "nats-server".into()
}

fn wait_for_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "nats-server did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `nats-server` process with its arguments, so it can be restarted.
pub struct Node {
    args: Vec<String>,
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(args: Vec<String>, port: u16) -> Node {
        let mut n = Node {
            args,
            port,
            child: None,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        let child = Command::new(nats_server())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): install it (apt-get install nats-server)")
            });
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    pub fn start(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single JetStream server of the test's own.
pub struct NatsServer {
    node: Node,
    _store: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.path().display().to_string(),
        ];
        let node = Node::spawn(args, port);
        wait_for_port(port);
        NatsServer {
            node,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.node.start();
        wait_for_port(self.node.port);
    }
}

/// Three JetStream servers clustered over loopback routes.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _stores: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for (i, (p, c)) in ports.iter().enumerate() {
            let store = tempfile::tempdir().unwrap();
            let args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                p.to_string(),
                "-n".into(),
                format!("wb-n{i}"),
                "-js".into(),
                "-sd".into(),
                store.path().display().to_string(),
                "--cluster_name".into(),
                "wbtest".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{c}"),
                "--routes".into(),
                routes.join(","),
            ];
            nodes.push(Node::spawn(args, *p));
            stores.push(store);
        }
        for n in &nodes {
            wait_for_port(n.port);
        }
        Cluster {
            nodes,
            _stores: stores,
        }
    }

    /// Every node's URL, comma-separated (a client fails over between them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn store(&self, i: usize) -> PathBuf {
        self._stores[i].path().to_path_buf()
    }
}
