//! The Engine API's image and registry calls: load, import, list, inspect,
//! tag, remove, save, pull, resolve, push, login.

use super::*;

fn credentials(auth: Option<pb::RegistryAuth>) -> Option<Credentials> {
    auth.filter(|a| !a.username.is_empty() || !a.password.is_empty())
        .map(|a| Credentials { username: a.username, password: a.password })
}

/// Runs a pull or push, streaming its progress lines and then its error, if any.
fn progress_stream<F>(work: impl FnOnce(ProgressTx) -> F) -> ProgressStream
where
    F: std::future::Future<Output = Result<(), RegistryError>> + Send + 'static,
{
    let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
    let (tx, rx) = mpsc::unbounded_channel();
    let fut = work(ptx);
    tokio::spawn(async move {
        let forward = async {
            while let Some(p) = prx.recv().await {
                let _ = tx.send(Ok(pb::Progress { id: p.id, status: p.status }));
            }
        };
        let (result, ()) = tokio::join!(fut, forward);
        if let Err(e) = result {
            tracing::info!(error = %e, "registry operation failed");
            let _ = tx.send(Err(rstatus(e)));
        }
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

pub(crate) fn image_pb(s: &ImageSummary) -> pb::Image {
    pb::Image {
        id: s.id.to_string(),
        repo_tags: s.repo_tags.clone(),
        repo_digests: s.repo_digests.clone(),
        created: s.created.clone().unwrap_or_default(),
        size: s.size,
    }
}

pub(super) async fn image_load(
    svc: &EngineService,
    req: Request<Streaming<pb::Chunk>>,
) -> Result<Response<pb::Images>, Status> {
    let reader = reader_from(req.into_inner(), None, |c: pb::Chunk| c.data);
    let images = svc.images.clone();
    let loaded = blocking(move || images.load(reader)).await?;
    for i in &loaded {
        svc.image_event("load", i);
    }
    Ok(Response::new(pb::Images { images: loaded.iter().map(image_pb).collect() }))
}

pub(super) async fn image_import(
    svc: &EngineService,
    req: Request<Streaming<pb::ImportChunk>>,
) -> Result<Response<pb::Image>, Status> {
    let mut stream = req.into_inner();
    let first =
        stream.next().await.ok_or_else(|| Status::invalid_argument("import needs a reference and an archive"))??;
    if first.reference.is_empty() {
        return Err(Status::invalid_argument("import needs a reference (NAME[:TAG])"));
    }
    let reference = first.reference.clone();
    let reader = reader_from(stream, Some(first.data), |c: pb::ImportChunk| c.data);
    let images = svc.images.clone();
    let img = blocking(move || images.import(reader, &reference)).await?;
    svc.image_event("import", &img);
    Ok(Response::new(image_pb(&img)))
}

pub(super) async fn image_list(svc: &EngineService, _req: Request<pb::Empty>) -> Result<Response<pb::Images>, Status> {
    let images = svc.images.clone();
    let list = tokio::task::spawn_blocking(move || images.list()).await.map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::Images { images: list.iter().map(image_pb).collect() }))
}

pub(super) async fn image_inspect(
    svc: &EngineService,
    req: Request<pb::ImageRef>,
) -> Result<Response<pb::JsonDoc>, Status> {
    let images = svc.images.clone();
    let r = req.into_inner().reference;
    let details = blocking(move || images.inspect(&r)).await?;
    let json = serde_json::to_string_pretty(&details).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::JsonDoc { json }))
}

pub(super) async fn image_tag(
    svc: &EngineService,
    req: Request<pb::ImageTagRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let images = svc.images.clone();
    let r = req.into_inner();
    let target = r.target.clone();
    let id = blocking(move || {
        images.tag(&r.source, &r.target)?;
        images.resolve_id(&r.target).map(|d| d.to_string())
    })
    .await?;
    svc.containers.events().emit("image", "tag", &id, attrs([("name", target)]));
    Ok(Response::new(pb::Empty {}))
}

pub(super) async fn image_remove(
    svc: &EngineService,
    req: Request<pb::ImageRemoveRequest>,
) -> Result<Response<pb::ImageRemoveResponse>, Status> {
    let images = svc.images.clone();
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let (id, removed) = blocking(move || {
        let id = images.resolve_id(&r.reference).map(|d| d.to_string()).unwrap_or_default();
        Ok((id, images.remove(&r.reference, r.force, &|id| containers.image_in_use(id))?))
    })
    .await?;
    let mut resp = pb::ImageRemoveResponse::default();
    let events = svc.containers.events();
    for x in removed {
        match x {
            Removed::Untagged(t) => {
                events.emit("image", "untag", &id, attrs([("name", t.clone())]));
                resp.untagged.push(t)
            }
            Removed::Deleted(d) => {
                events.emit("image", "delete", &d.to_string(), attrs([("name", d.to_string())]));
                resp.deleted.push(d.to_string())
            }
        }
    }
    Ok(Response::new(resp))
}

pub(super) async fn image_save(
    svc: &EngineService,
    req: Request<pb::ImageSaveRequest>,
) -> Result<Response<ChunkStream>, Status> {
    let refs = req.into_inner().references;
    if refs.is_empty() {
        return Err(Status::invalid_argument("save needs at least one image"));
    }
    // Resolve first, so a bad reference is an error rather than a broken stream.
    for r in &refs {
        let images = svc.images.clone();
        let r = r.clone();
        blocking(move || images.inspect(&r).map(|_| ())).await?;
    }
    let (tx, rx) = mpsc::channel(4);
    let images = svc.images.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter { tx: tx.clone(), buf: Vec::new() };
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let res = images
            .save(&refs, &mut w)
            .and_then(|_| w.flush().map_err(|e| ImageError::BadArchive { reason: e.to_string() }));
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(status(e)));
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

pub(super) async fn image_pull(
    svc: &EngineService,
    req: Request<pb::ImagePullRequest>,
) -> Result<Response<ProgressStream>, Status> {
    let r = req.into_inner();
    let (regs, images) = (svc.registries.clone(), svc.images.clone());
    let creds = credentials(r.auth);
    Ok(Response::new(progress_stream(move |tx| async move {
        crate::registry::pull(&regs, images, &r.reference, creds, &tx).await
    })))
}

pub(super) async fn image_resolve(
    svc: &EngineService,
    req: Request<pb::ImagePullRequest>,
) -> Result<Response<pb::ImageRef>, Status> {
    let r = req.into_inner();
    let reference =
        crate::registry::resolve(&svc.registries, &r.reference, credentials(r.auth)).await.map_err(rstatus)?;
    Ok(Response::new(pb::ImageRef { reference }))
}

pub(super) async fn image_push(
    svc: &EngineService,
    req: Request<pb::ImagePushRequest>,
) -> Result<Response<ProgressStream>, Status> {
    let r = req.into_inner();
    let (regs, images) = (svc.registries.clone(), svc.images.clone());
    let creds = credentials(r.auth);
    let events = svc.containers.events();
    Ok(Response::new(progress_stream(move |tx| async move {
        crate::registry::push(&regs, images, &r.reference, creds, &tx).await?;
        events.emit("image", "push", &r.reference, attrs([("name", r.reference.clone())]));
        Ok(())
    })))
}

pub(super) async fn registry_login(
    svc: &EngineService,
    req: Request<pb::RegistryLoginRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let r = req.into_inner();
    let creds = credentials(r.auth).ok_or_else(|| Status::invalid_argument("login needs a username and password"))?;
    crate::registry::login(&svc.registries, &r.registry, creds).await.map_err(rstatus)?;
    Ok(Response::new(pb::Empty {}))
}
