//! The API boundary: wire types generated from `proto/shoal.proto` (`pb`), the
//! domain model the managers store (`model`, `service`, `health`, `network`), netd's API types
//! (`net`), Docker's spellings of sizes, CPUs, durations and signals (`parse`) and
//! of mounts (`mount`), join tokens and transport security (`token`, `tls`), the
//! steps of a task's start as tracing events (`timeline`). It owns no state
//! and does no I/O beyond the sockets it is handed, except `probe`: the liveness
//! probe binds its own UDP sockets and runs the node's responder on a thread.

pub mod container;
pub mod digest;
pub mod health;
pub mod image_ref;
pub mod model;
pub mod mount;
pub mod net;
pub mod network;
pub mod parse;
pub mod probe;
pub mod secret;
pub mod service;
pub mod template;
pub mod timeline;
pub mod tls;
pub mod token;

/// Generated gRPC/protobuf types. Only the API edges (manager API, dispatcher,
/// agent session, CLI) touch these; everything inside uses [`model`].
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("shoal.v1");

    impl std::fmt::Debug for RegistryAuth {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RegistryAuth").field("username", &self.username).field("password", &"<redacted>").finish()
        }
    }

    impl std::fmt::Debug for ObjectData {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ObjectData")
                .field("name", &self.name)
                .field("data", &format_args!("<redacted {} bytes>", self.data.len()))
                .field("template", &self.template)
                .finish()
        }
    }
}

/// A gRPC channel over a local unix socket (the daemon's or netd's).
pub async fn unix_channel(path: &std::path::Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let p = path.to_path_buf();
    let connector = tower::service_fn(move |_| {
        let p = p.clone();
        async move { tokio::net::UnixStream::connect(p).await.map(hyper_util::rt::TokioIo::new) }
    });
    tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector(connector).await
}

/// The default port of a manager: control API, Raft and dispatcher.
pub const MANAGER_PORT: u16 = 4620;

/// Shoal's version, reported by nodes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
