//! The Engine API's volume calls.

use super::*;

pub(crate) fn volume_pb(v: &crate::volumes::Volume) -> pb::VolumeInfo {
    pb::VolumeInfo {
        name: v.name.clone(),
        mountpoint: v.mountpoint.display().to_string(),
        created_ms: v.created_ms,
        anonymous: v.anonymous,
        in_use: false,
        labels: v.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(super) async fn volume_create(
    svc: &EngineService,
    req: Request<pb::VolumeCreateRequest>,
) -> Result<Response<pb::VolumeInfo>, Status> {
    let pb::VolumeCreateRequest { name, labels } = req.into_inner();
    if labels.keys().any(String::is_empty) {
        return Err(Status::invalid_argument("a volume label needs a key: --label KEY=VALUE"));
    }
    let labels = labels.into_iter().collect();
    let fresh = name.is_empty() || svc.volumes.inspect(&name).is_err();
    let v = svc.volumes.create(if name.is_empty() { None } else { Some(&name) }, &labels).map_err(vstatus)?;
    if fresh {
        svc.containers.events().emit("volume", "create", &v.name, attrs([("driver", "local".into())]));
    }
    Ok(Response::new(volume_pb(&v)))
}

pub(super) async fn volume_list(
    svc: &EngineService,
    _req: Request<pb::Empty>,
) -> Result<Response<pb::VolumeInfos>, Status> {
    let containers = svc.containers.clone();
    let used = cblocking(move || Ok(containers.volumes_in_use())).await?;
    let volumes =
        svc.volumes.list().iter().map(|v| pb::VolumeInfo { in_use: used.contains(&v.name), ..volume_pb(v) }).collect();
    Ok(Response::new(pb::VolumeInfos { volumes }))
}

pub(super) async fn volume_inspect(
    svc: &EngineService,
    req: Request<pb::VolumeRef>,
) -> Result<Response<pb::JsonDoc>, Status> {
    let v = svc.volumes.inspect(&req.into_inner().name).map_err(vstatus)?;
    let mut doc = serde_json::to_value(&v).map_err(|e| Status::internal(e.to_string()))?;
    // Docker's names beside ours (`inspect -f '{{.Mountpoint}}'`).
    for (k, val) in [
        ("Name", v.name.clone().into()),
        ("Driver", "local".into()),
        ("Mountpoint", v.mountpoint.display().to_string().into()),
        ("CreatedAt", shoal_proto::model::rfc3339(v.created_ms).into()),
        ("Scope", "local".into()),
        ("Labels", serde_json::json!(v.labels)),
    ] {
        doc[k] = val;
    }
    let json = serde_json::to_string_pretty(&doc).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::JsonDoc { json }))
}

pub(super) async fn volume_remove(
    svc: &EngineService,
    req: Request<pb::VolumeRemoveRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let name = r.name.clone();
    let user = cblocking(move || Ok(containers.volume_user(&name))).await?;
    match svc.volumes.remove(&r.name, user) {
        Err(crate::volumes::VolumeError::NotFound(_)) if r.force => {}
        Ok(()) => svc.containers.events().emit("volume", "destroy", &r.name, attrs([("driver", "local".into())])),
        other => other.map_err(vstatus)?,
    }
    Ok(Response::new(pb::Empty {}))
}
