//! Decides how one redirected connection is served. For now: a blind relay to
//! the original destination.
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{ConnSummary, Error, ProxyContext, relay};
use crate::pipeline::ConnMeta;

/// Serves one accepted, redirected connection whose original destination is known.
pub async fn serve(
    mut client: TcpStream,
    meta: Arc<ConnMeta>,
    ctx: Arc<ProxyContext>,
    summary: &mut ConnSummary,
) -> Result<(), Error> {
    let dst = meta.orig_dst.ok_or(Error::NoOrigDst(meta.peer))?;
    let mut upstream = match relay::connect_upstream(dst, ctx.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            relay::reset(client);
            return Err(e);
        }
    };
    summary.kind = "relay";
    let (up, down) = relay::relay(&mut client, &mut upstream).await?;
    summary.bytes_up = up;
    summary.bytes_down = down;
    Ok(())
}
