//! A container's root filesystem: an overlay of the image's layers below the
//! container's own writable layer (`upper`), with one read-only layer between
//! them that holds the mount points every container's config names: `/proc`,
//! `/sys`, `/dev` and the files bound over `/etc` (`ETC_FILES`).
//!
//! libcontainer makes a mount point that the root lacks before it mounts
//! there. For an image without them (busybox, anything `FROM scratch`), each
//! start created three directories and three files in the writable layer,
//! and copied `/etc` up to do so: ~2 % of the CPU of a 500-container `service
//! create` here. Docker keeps an "init" layer of the same mount points for
//! each container. The mount points are the same for every container, so
//! Shoal makes the layer once and every container's root lists it. As with
//! Docker's, what the layer holds hides the image's entry of the same path.
//! That is an image's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`,
//! which every container has bound over anyway, and the attributes of its
//! top directories.

use std::io;
use std::path::{Path, PathBuf};

use super::ETC_FILES;

/// The layer's directory name. A layer in use is never changed, so a layer
/// with other entries gets another name.
const LAYER: &str = "mountpoints-1";
/// The mount points that are directories.
const DIRS: [&str; 4] = ["dev", "etc", "proc", "sys"];

/// The layer of mount points in `parent`, made there the first time (whole,
/// under another name, then renamed into place).
pub(super) fn mountpoints_layer(parent: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let layer = parent.join(LAYER);
    if layer.is_dir() {
        return Ok(layer);
    }
    let tmp = parent.join(format!(".{LAYER}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = (|| {
        std::fs::create_dir_all(&tmp)?;
        for d in [tmp.clone()].into_iter().chain(DIRS.iter().map(|d| tmp.join(d))) {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
        for (_, target) in ETC_FILES {
            let f = tmp.join(target.trim_start_matches('/'));
            std::fs::File::create(&f)?;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::File::open(tmp.join("etc"))?.sync_all()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &layer)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(layer)
}

/// The overlay's mount options for the container in `dir`: `image_layers`
/// from the image's bottom layer to its top, the mount points' layer above
/// them (where there is one), the container's writable layer on top.
pub(super) fn overlay_options(mountpoints: Option<&Path>, image_layers: &[PathBuf], dir: &Path) -> String {
    // overlayfs: lowerdir lists the top layer first.
    let lower: Vec<String> = mountpoints
        .into_iter()
        .chain(image_layers.iter().rev().map(PathBuf::as_path))
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_layer_is_made_once_with_every_mount_point() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = mountpoints_layer(tmp.path()).unwrap();
        assert_eq!(layer, tmp.path().join(LAYER));
        for d in DIRS {
            let m = std::fs::metadata(layer.join(d)).unwrap();
            assert!(m.is_dir(), "{d}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{d}");
        }
        for (_, target) in ETC_FILES {
            let m = std::fs::metadata(layer.join(target.trim_start_matches('/'))).unwrap();
            assert!(m.is_file() && m.len() == 0, "{target}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o644, "{target}");
        }
        // Nothing else in it, and nothing left beside it.
        let mut top: Vec<String> =
            std::fs::read_dir(&layer).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        top.sort();
        assert_eq!(top, DIRS);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        // A layer that is there is used as it is, never made again.
        std::fs::write(layer.join("etc/hosts"), "kept").unwrap();
        assert_eq!(mountpoints_layer(tmp.path()).unwrap(), layer);
        assert_eq!(std::fs::read_to_string(layer.join("etc/hosts")).unwrap(), "kept");
    }

    #[test]
    fn a_parent_it_cannot_be_made_in_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(mountpoints_layer(&file).is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_mount_points_sit_between_the_image_and_the_container() {
        let layers = [PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let dir = Path::new("/c/abc");
        assert_eq!(
            overlay_options(Some(Path::new("/m")), &layers, dir),
            "lowerdir=/m:/l/top:/l/bottom,upperdir=/c/abc/upper,workdir=/c/abc/work"
        );
        assert_eq!(
            overlay_options(None, &layers, dir),
            "lowerdir=/l/top:/l/bottom,upperdir=/c/abc/upper,workdir=/c/abc/work"
        );
    }
}
