//! The one place the engine's errors become gRPC statuses, and the
//! blocking-pool helpers that map them on the way out.

use super::*;

pub(super) fn rstatus(e: RegistryError) -> Status {
    let msg = e.to_string();
    match e {
        RegistryError::Image(i) => status(i),
        RegistryError::InvalidReference { .. }
        | RegistryError::Unsupported { .. }
        | RegistryError::NoPlatform { .. } => Status::invalid_argument(msg),
        RegistryError::ManifestUnknown { .. } => Status::not_found(msg),
        RegistryError::Unauthorized { .. } | RegistryError::BadCredentials { .. } => Status::unauthenticated(msg),
        RegistryError::Denied { .. } => Status::permission_denied(msg),
        RegistryError::DigestMismatch { .. } => Status::data_loss(msg),
        // Not `unavailable`: that code means the daemon itself is unreachable to the CLI.
        RegistryError::Unreachable { .. } | RegistryError::Tls { .. } => Status::failed_precondition(msg),
        RegistryError::Protocol { .. } => Status::unknown(msg),
    }
}

pub(super) fn vstatus(e: crate::volumes::VolumeError) -> Status {
    use crate::volumes::VolumeError as V;
    let msg = e.to_string();
    match e {
        V::NotFound(_) => Status::not_found(msg),
        V::InUse { .. } => Status::failed_precondition(msg),
        V::BadName(_) | V::BadMount { .. } | V::BindSourceMissing(_) => Status::invalid_argument(msg),
        V::Io { .. } => Status::internal(msg),
    }
}

pub(super) fn cstatus(e: ContainerError) -> Status {
    let msg = e.to_string();
    match e {
        ContainerError::NotFound(_) => Status::not_found(msg),
        ContainerError::Image(i) => status(i),
        ContainerError::Volume(v) => vstatus(v),
        ContainerError::NameInUse { .. } => Status::already_exists(msg),
        ContainerError::Running(_) | ContainerError::NotRunning(_) => Status::failed_precondition(msg),
        ContainerError::Invalid { .. } | ContainerError::Spec(_) | ContainerError::HostConfig(_) => {
            Status::invalid_argument(msg)
        }
        ContainerError::NoLogs => Status::failed_precondition(msg),
        ContainerError::NetworkNotFound(_) => Status::not_found(msg),
        ContainerError::Cluster(_) => Status::failed_precondition(msg),
        ContainerError::StartFailed { .. } | ContainerError::Io { .. } => Status::internal(msg),
    }
}

pub(super) fn status(e: ImageError) -> Status {
    let msg = e.to_string();
    match e {
        ImageError::NoSuchImage { .. } => Status::not_found(msg),
        ImageError::InUse { .. } | ImageError::MultipleRepositories { .. } | ImageError::Locked { .. } => {
            Status::failed_precondition(msg)
        }
        ImageError::Read { .. }
        | ImageError::Write { .. }
        | ImageError::Io { .. }
        | ImageError::CorruptMetadata { .. } => Status::internal(msg),
        _ => Status::invalid_argument(msg),
    }
}

pub(super) async fn cblocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(cstatus)
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}
