//! Images on one lab host with the real binary: import a busybox rootfs,
//! tag, save, remove, load back; bad archives refused with a clear error.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_tests::lab::{Lab, busybox_rootfs_tar, lab_or_skip, wait_for};

fn fails_with(lab: &Lab, args: &[&str], needle: &str) -> Result<()> {
    let out = lab.exec(1, args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "`shoal {}` should have failed", args.join(" "));
    ensure!(err.contains(needle), "`shoal {}`: expected {needle:?} in {err:?}", args.join(" "));
    Ok(())
}

#[test]
fn images_import_tag_save_rm_load() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let tmp = tempfile::Builder::new().prefix("shl-img-").tempdir()?;
    let rootfs = busybox_rootfs_tar(tmp.path())?;
    let lab = Lab::up_bare(1)?;
    let p = |name: &str| tmp.path().join(name).display().to_string();

    let id = lab.shoal(1, &["image", "import", &p("rootfs.tar"), "busybox:local"])?.trim().to_string();
    ensure!(id.starts_with("sha256:") && id.len() == 71, "import printed {id:?}");
    let ls = lab.shoal(1, &["images"])?;
    ensure!(ls.starts_with("REPOSITORY   TAG") && ls.contains("busybox      local"), "{ls}");
    lab.shoal(1, &["image", "tag", "busybox:local", "mybox:v1"])?;
    let v = lab.shoal_json(1, &["image", "ls"])?;
    let tags: Vec<String> =
        v[0]["repo_tags"].as_array().context("tags")?.iter().filter_map(|t| t.as_str().map(String::from)).collect();
    ensure!(v.as_array().map(Vec::len) == Some(1) && tags.len() == 2, "one image with two tags: {v}");

    lab.shoal(1, &["image", "save", "-o", &p("saved.tar"), "busybox:local", "mybox:v1"])?;
    ensure!(std::fs::metadata(p("saved.tar"))?.len() > 500_000, "the archive holds busybox");
    let rm = lab.shoal(1, &["image", "rm", "busybox:local"])?;
    ensure!(rm.trim() == "Untagged: busybox:local", "{rm}");
    let rm = lab.shoal(1, &["image", "rm", "mybox:v1"])?;
    ensure!(rm.contains("Untagged: mybox:v1") && rm.contains(&format!("Deleted: {id}")), "{rm}");
    fails_with(&lab, &["image", "inspect", "mybox:v1"], "no such image")?;
    let layers = |lab: &Lab| -> Result<usize> {
        let out = lab.run(1, &["sh", "-c", "ls /var/lib/shoal/images/layers/sha256 | wc -l"])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    ensure!(layers(&lab)? == 0, "a deleted image leaves no layer behind");

    let loaded = lab.shoal(1, &["image", "load", "-i", &p("saved.tar")])?;
    ensure!(loaded.contains("Loaded image: busybox:local") && loaded.contains("Loaded image: mybox:v1"), "{loaded}");
    let inspect: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["image", "inspect", "mybox:v1"])?)?;
    ensure!(inspect[0]["Id"] == id.as_str(), "same id after the round trip: {inspect}");
    // Loading again stores nothing twice.
    lab.shoal(1, &["image", "load", "-q", "-i", &p("saved.tar")])?;
    ensure!(layers(&lab)? == 1, "layers are stored once by digest");
    // The store survives a daemon restart.
    lab.stop(1)?;
    lab.start(1)?;
    wait_for("the image after a restart", Duration::from_secs(20), || {
        Ok(lab.exec(1, &["image", "inspect", "busybox:local"])?.status.success().then_some(()))
    })?;

    // Bad input: clear errors, nothing changes.
    std::fs::write(p("junk.tar"), b"this is not an archive")?;
    fails_with(&lab, &["image", "load", "-i", &p("junk.tar")], "not a tar archive")?;
    fails_with(&lab, &["image", "load", "-i", &p("missing.tar")], "missing.tar")?;
    fails_with(&lab, &["image", "import", &p("rootfs.tar"), "Bad:Ref:x"], "invalid reference")?;
    fails_with(&lab, &["image", "rm", "nosuch"], "no such image")?;
    fails_with(&lab, &["image", "tag", "nosuch", "x:y"], "no such image")?;
    ensure!(lab.shoal_json(1, &["image", "ls"])?.as_array().map(Vec::len) == Some(1), "still one image");
    drop(rootfs);
    Ok(())
}
