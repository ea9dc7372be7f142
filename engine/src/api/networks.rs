//! The Engine API's network calls, forwarded to netd.

use super::*;

pub(super) async fn network_create(
    svc: &EngineService,
    req: Request<pb::NetworkCreateRequest>,
) -> Result<Response<pb::NetworkInfo>, Status> {
    let r = req.into_inner();
    let n = svc.netd()?.call_async(async move |c| c.network_create(r).await.map(|r| r.into_inner())).await?;
    svc.containers.events().emit(
        "network",
        "create",
        &n.id,
        attrs([("name", n.name.clone()), ("type", n.driver.clone())]),
    );
    Ok(Response::new(n))
}

pub(super) async fn network_list(
    svc: &EngineService,
    _req: Request<pb::Empty>,
) -> Result<Response<pb::NetworkInfos>, Status> {
    svc.netd()?
        .call_async(async move |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner()))
        .await
        .map(Response::new)
}

pub(super) async fn network_remove(
    svc: &EngineService,
    req: Request<pb::NetworkRef>,
) -> Result<Response<pb::Empty>, Status> {
    let r = req.into_inner();
    let netd = svc.netd()?;
    // The network's id and name for the event, if netd knows it.
    let known = netd.call_async(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())).await.ok();
    let found = known.and_then(|l| l.networks.into_iter().find(|n| n.name == r.name || n.id.starts_with(&r.name)));
    let done = netd.call_async(async move |c| c.network_remove(r).await.map(|r| r.into_inner())).await?;
    if let Some(n) = found {
        svc.containers.events().emit("network", "destroy", &n.id, attrs([("name", n.name), ("type", n.driver)]));
    }
    Ok(Response::new(done))
}

pub(super) async fn network_connect(
    svc: &EngineService,
    req: Request<pb::NetworkConnectRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.connect(&r.container, &r.network, r.aliases, &r.ip)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn network_disconnect(
    svc: &EngineService,
    req: Request<pb::NetworkConnectRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.disconnect(&r.container, &r.network)).await?;
    Ok(Response::new(container_pb(&c)))
}
