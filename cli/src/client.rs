//! Connecting to a daemon (unix socket, no TLS) or a manager (TCP, mutual TLS
//! with the certificates in `--tls-dir`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_proto::pb::control_client::ControlClient;
use shoal_proto::pb::local_client::LocalClient;
use shoal_proto::tls::NodeCerts;
use tonic::transport::Channel;

use crate::args::{Cli, DEFAULT_SOCKET};

pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

pub fn target(cli: &Cli) -> anyhow::Result<Target> {
    let host = cli.host.clone().or_else(|| cli.host_long.clone()).unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = host.strip_prefix("tcp://") {
        return Ok(Target::Tcp(addr.trim_end_matches('/').to_string()));
    }
    bail!("invalid host {host:?}: use unix:///path/to/socket or tcp://HOST:PORT")
}

pub async fn channel(cli: &Cli) -> anyhow::Result<Channel> {
    match target(cli)? {
        Target::Unix(path) => {
            if !path.exists() {
                bail!(
                    "cannot connect to the Shoal daemon at unix://{}: no such socket. Is `shoal daemon` running?",
                    path.display()
                );
            }
            shoal_proto::unix_channel(&path)
                .await
                .with_context(|| format!("cannot connect to the Shoal daemon at unix://{}", path.display()))
        }
        Target::Tcp(addr) => {
            let dir = cli.tls_dir.clone().or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".shoal")));
            let dir =
                dir.context("a tcp:// host needs client certificates: pass --tls-dir DIR (ca.pem, cert.pem, key.pem)")?;
            let read = |n: &str| {
                std::fs::read_to_string(dir.join(n)).with_context(|| {
                    format!("a tcp:// host needs a client certificate: cannot read {}", dir.join(n).display())
                })
            };
            let certs = NodeCerts { ca_pem: read("ca.pem")?, cert_pem: read("cert.pem")?, key_pem: read("key.pem")? };
            let cfg = Arc::new(certs.client_config()?);
            Ok(shoal_proto::tls::channel(&addr, cfg, Duration::from_secs(3))?)
        }
    }
}

/// A channel to the local daemon; `what` names the commands that need it.
async fn local_channel(cli: &Cli, what: &str) -> anyhow::Result<Channel> {
    if let Target::Tcp(_) = target(cli)? {
        bail!("{what} talk to the local daemon; use a unix:// host");
    }
    channel(cli).await
}

pub async fn local(cli: &Cli) -> anyhow::Result<LocalClient<Channel>> {
    Ok(LocalClient::new(local_channel(cli, "swarm membership commands (init, join, leave, info)").await?))
}

pub async fn engine(cli: &Cli) -> anyhow::Result<shoal_proto::pb::engine_client::EngineClient<Channel>> {
    Ok(shoal_proto::pb::engine_client::EngineClient::new(local_channel(cli, "image and container commands").await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

pub async fn control(cli: &Cli) -> anyhow::Result<ControlClient<Channel>> {
    // Task lists of big services run to megabytes.
    Ok(ControlClient::new(channel(cli).await?).max_decoding_message_size(256 << 20))
}
