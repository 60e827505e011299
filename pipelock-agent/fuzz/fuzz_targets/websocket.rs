//! The WebSocket relay (`proxy::websocket::relay`) between two in-memory
//! peers that send arbitrary bytes after the upgrade: frames of any shape,
//! fragmentation, control frames, bad masks, reserved bits (permessage-
//! deflate that was never negotiated), over-size lengths, half frames.
//! Nothing panics and the relay ends by itself once both peers have said
//! everything; each whole message goes through the real `ScanPipeline`
//! (strict) as the listeners call it.
//!
//! Input: byte 0 = where the client's bytes end (as a fraction of the
//! rest, in 256ths); then the client's bytes, then the server's.
#![no_main]
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use pipelock_agent::{
    config::{Mode, pipelock::WebsocketProxy},
    pipeline::{ConnMeta, Exchange, Listener, Pipeline as _, ScanConfig, ScanPipeline},
    proxy::websocket::{self, Hooks, WsSettings},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn pipeline() -> &'static ScanPipeline {
    static P: OnceLock<ScanPipeline> = OnceLock::new();
    P.get_or_init(|| {
        ScanPipeline::new(ScanConfig {
            mode: Mode::Strict,
            ..ScanConfig::default()
        })
        .expect("pipeline")
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

struct Shared(Arc<Mutex<Box<dyn Exchange>>>);

impl Hooks for Shared {
    fn with<R>(&self, f: impl FnOnce(&mut dyn Exchange) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.as_mut())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let at = rest.len() * usize::from(cut) / 256;
    let (client_bytes, server_bytes) = rest.split_at(at);
    let meta = Arc::new(ConnMeta {
        id: 1,
        listener: Listener::Transparent,
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        orig_dst: Some(SocketAddr::from(([127, 0, 0, 1], 80))),
        attribution: None,
        verified_name: None,
    });
    let hooks = Shared(Arc::new(Mutex::new(pipeline().exchange(&meta))));
    let cfg = WebsocketProxy {
        max_message_bytes: 4096,
        allow_binary_frames: cut & 1 == 1,
        ..WebsocketProxy::default()
    };
    let ws = Arc::new(WsSettings::new(&cfg));
    runtime().block_on(async move {
        let (down_agent, mut down_peer) = tokio::io::duplex(16 << 10);
        let (up_agent, mut up_peer) = tokio::io::duplex(16 << 10);
        let relay = websocket::relay(down_agent, up_agent, hooks, ws, 1, None);
        let client = async {
            let _ = down_peer.write_all(client_bytes).await;
            let _ = down_peer.shutdown().await;
            let mut sink = Vec::new();
            let _ = down_peer.read_to_end(&mut sink).await;
        };
        let server = async {
            let _ = up_peer.write_all(server_bytes).await;
            let _ = up_peer.shutdown().await;
            let mut sink = Vec::new();
            let _ = up_peer.read_to_end(&mut sink).await;
        };
        // Both peers end their writes, so the relay must end on its own.
        let all = async { tokio::join!(relay, client, server) };
        if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
            panic!("the relay did not end after both peers closed");
        }
    });
});
