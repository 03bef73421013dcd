//! A loopback TCP proxy for outage tests: forwards to a database and can
//! play a crashed server (live connections cut, new ones closed at once).
//! Shared by `writer/tests/outage.rs` and the root's `tests/outage.rs`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:<port> to `upstream`. While `down`, live connections
/// are cut and new ones are closed at once (what a crashed server looks like).
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let upstream = upstream.clone();
                c.lock().push(tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }));
            }
        });
        Proxy {
            port,
            down,
            conns,
            accept,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for c in self.conns.lock().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_down(true);
        self.accept.abort();
    }
}

/// `scheme://user@host:port/db` -> (host:port, same URL through 127.0.0.1:`port`).
pub fn via_proxy(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let at = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    (
        hostport.to_owned(),
        format!("{scheme}://{at}127.0.0.1:{port}/{path}"),
    )
}
