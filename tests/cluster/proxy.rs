//! A TCP proxy in front of an API server, so a test can cut one client off the API (a network
//! partition) on either backend without stopping the server others use. TLS passes through
//! untouched: both backends' serving certificates name 127.0.0.1.
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// Forwards connections on a fresh 127.0.0.1 port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, rx) = watch::channel(false);
        tokio::spawn(accept(listener, upstream, rx));
        Proxy { addr, cut }
    }

    /// Stops forwarding: the listener closes and every open connection is dropped.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            _ = cut.wait_for(|c| *c) => return,
            c = listener.accept() => c,
        };
        let Ok((client, _)) = conn else { continue };
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = cut.wait_for(|c| *c) => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}
