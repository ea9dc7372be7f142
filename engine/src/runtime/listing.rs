//! The containers as a node's worker lists them on each pass, each read
//! again only when its directory changed since the last listing.
//!
//! A full listing reads every container's record, restart bookkeeping,
//! endpoints, shim files and its shim's `/proc/<pid>/stat`; a node's worker
//! lists after every start that ends, so a node starting a hundred
//! containers read them all a hundred times (~30 % of a worker daemon's
//! CPU in a `create500`). Here an inotify watch of the containers' root and
//! of each container's directory says which ones changed: every record of a
//! container is written into its directory (most by a rename), so its
//! directory's events name every change a listing could see, and the events
//! are drained before anything is read, so a change made before a listing
//! began is in it. Two things change without an event, and are read every
//! time or on the safety net: a container with a health check (its verdict
//! lives in a subdirectory) is read on every listing, and a shim that died
//! without recording anything (no file changes) is seen by the full
//! reread, at least every `LIST_RESCAN`, as by the supervisor's.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::watch::DirWatch;
use super::{Container, Containers};

/// The longest a listing trusts its memory: then it reads every container
/// again (a shim that died without recording its end; events lost).
pub const LIST_RESCAN: Duration = Duration::from_secs(2);

/// Whatever changes the entries of a directory or a file's content: the
/// containers' root gains and loses containers (created, retired by a
/// rename, deleted); a container's directory has its records renamed in,
/// written in place, or deleted (a restart clears the last run's).
const CHANGES: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// What the last listing saw, and the watch that says what changed since.
#[derive(Default)]
pub(super) struct Listing {
    /// None before the first listing, or where inotify is unavailable
    /// (then every listing reads everything).
    watch: Option<DirWatch>,
    /// The root's watch descriptor (its events name a container's directory).
    root_wd: i32,
    /// Each watched container directory's descriptor, and the reverse.
    ids: HashMap<i32, String>,
    wds: HashMap<String, i32>,
    /// The containers as last read, by id.
    known: HashMap<String, Container>,
    last_full: Option<Instant>,
    /// How many containers were read, all listings together (for tests and
    /// the debug log).
    pub(super) reads: u64,
}

impl Listing {
    /// Every container, reading again only those whose directory changed
    /// since the last call (and those with a health check); all of them on
    /// the first call, when events were lost, and once the last full read
    /// is `rescan` old.
    pub(super) fn list(&mut self, c: &Containers, rescan: Duration) -> Vec<Container> {
        if self.watch.is_none()
            && let Some((w, wd)) = DirWatch::with_mask_wd(&c.root, CHANGES)
        {
            (self.watch, self.root_wd, self.last_full) = (Some(w), wd, None);
        }
        let due = self.last_full.is_none_or(|t| t.elapsed() >= rescan);
        // Drained before anything is read: a change after this is in the next listing's events.
        let changed = self.watch.as_ref().and_then(|w| w.drain_events());
        match changed {
            Some(events) if !due => {
                let mut ids: BTreeSet<String> = events
                    .into_iter()
                    .filter_map(|(wd, name)| match wd == self.root_wd {
                        true => Some(name),
                        false => self.ids.get(&wd).cloned(),
                    })
                    .filter(|id| !id.is_empty())
                    .collect();
                ids.extend(self.known.values().filter(|k| k.record.health.is_some()).map(|k| k.record.id.clone()));
                for id in ids {
                    self.read(c, &id);
                }
            }
            _ => self.read_all(c),
        }
        let mut out: Vec<Container> = self.known.values().cloned().collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.record.created_ms));
        out
    }

    /// Reads every container again, watching each directory first.
    fn read_all(&mut self, c: &Containers) {
        let present: BTreeSet<String> = std::fs::read_dir(&c.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        self.known.clear();
        self.ids.retain(|_, id| present.contains(id));
        self.wds.retain(|id, _| present.contains(id));
        for id in &present {
            self.read(c, id);
        }
        self.last_full = Some(Instant::now());
    }

    /// Reads one container again: watched first, then read, so a record
    /// written in between is seen by the read or by the next listing.
    fn read(&mut self, c: &Containers, id: &str) {
        let dir = c.dir(id);
        if let (Some(w), false) = (&self.watch, self.wds.contains_key(id)) {
            match w.add_mask(&dir, CHANGES) {
                Some(wd) => {
                    self.ids.insert(wd, id.to_string());
                    self.wds.insert(id.to_string(), wd);
                }
                None if !dir.is_dir() => {
                    // Gone (retired, removed) or never a container's directory.
                    self.known.remove(id);
                    return;
                }
                // Unwatchable: the next full read sees it again.
                None => {}
            }
        }
        self.reads += 1;
        match c.load(id) {
            Some(container) => {
                self.known.insert(id.to_string(), container);
            }
            None => {
                self.known.remove(id);
                if !dir.exists()
                    && let Some(wd) = self.wds.remove(id)
                {
                    self.ids.remove(&wd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Status;
    use crate::runtime::tests::{containers, record_json};

    const NEVER: Duration = Duration::from_secs(3600);

    fn recorded(c: &Containers, id: &str) {
        let dir = c.dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        crate::files::write_replace(&dir.join("container.json"), record_json(id, id).to_string().as_bytes()).unwrap();
    }

    fn status(l: &[Container], id: &str) -> Option<Status> {
        l.iter().find(|c| c.record.id == id).map(|c| c.status.clone())
    }

    #[test]
    fn a_listing_reads_only_the_containers_that_changed_and_sees_every_change() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let mut l = Listing::default();
        recorded(&c, "a1");
        recorded(&c, "b2");
        assert_eq!(l.list(&c, NEVER).len(), 2);
        let after_first = l.reads;
        assert_eq!(l.list(&c, NEVER).len(), 2);
        assert_eq!(l.reads, after_first, "nothing changed: nothing read");

        // A shim records an exit (by a rename): that container alone is read again.
        let exited = serde_json::json!({"exit_code": 3, "oom_killed": false, "finished_ms": 9});
        crate::files::write_replace(&c.dir("a1").join("exit.json"), exited.to_string().as_bytes()).unwrap();
        let seen = l.list(&c, NEVER);
        assert!(matches!(status(&seen, "a1"), Some(Status::Exited { code: 3, .. })), "{seen:?}");
        assert_eq!(l.reads, after_first + 1, "only the changed container was read");

        // Written in place, then deleted (a restart clears the last run's records).
        std::fs::write(c.dir("b2").join("error.json"), r#"{"message":"no such binary"}"#).unwrap();
        assert!(matches!(status(&l.list(&c, NEVER), "b2"), Some(Status::Dead { .. })));
        std::fs::remove_file(c.dir("b2").join("error.json")).unwrap();
        assert_eq!(status(&l.list(&c, NEVER), "b2"), Some(Status::Created));

        // A new container, then one retired (renamed out of the root) and one deleted.
        recorded(&c, "c3");
        assert!(status(&l.list(&c, NEVER), "c3").is_some(), "a new container is seen");
        let away = tmp.path().join("retired");
        std::fs::create_dir_all(&away).unwrap();
        std::fs::rename(c.dir("a1"), away.join("a1")).unwrap();
        std::fs::remove_dir_all(c.dir("c3")).unwrap();
        let seen = l.list(&c, NEVER);
        assert_eq!(seen.iter().map(|c| c.record.id.as_str()).collect::<Vec<_>>(), ["b2"]);
        // The retired directory's later changes name no container.
        std::fs::remove_dir_all(away.join("a1")).unwrap();
        assert_eq!(l.list(&c, NEVER).len(), 1);
    }

    #[test]
    fn a_directory_made_before_its_record_is_seen_once_the_record_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let mut l = Listing::default();
        assert!(l.list(&c, NEVER).is_empty());
        std::fs::create_dir_all(c.dir("a1")).unwrap();
        assert!(l.list(&c, NEVER).is_empty(), "no record yet");
        crate::files::write_replace(
            &c.dir("a1").join("container.json"),
            record_json("a1", "web").to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(l.list(&c, NEVER).len(), 1, "the record's rename in the watched directory");
    }

    #[test]
    fn a_change_without_an_event_is_seen_by_the_full_reread() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let mut l = Listing::default();
        recorded(&c, "a1");
        // A shim that runs, then dies without recording its end: no file changes.
        let mut shim = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let started = serde_json::json!({"shim_pid": shim.id(), "pid": shim.id(), "started_ms": 5});
        crate::files::write_replace(&c.dir("a1").join("started.json"), started.to_string().as_bytes()).unwrap();
        assert!(matches!(status(&l.list(&c, NEVER), "a1"), Some(Status::Running { .. })));
        shim.kill().unwrap();
        shim.wait().unwrap();
        assert!(matches!(status(&l.list(&c, NEVER), "a1"), Some(Status::Running { .. })), "no event: the memory holds");
        assert!(matches!(status(&l.list(&c, Duration::ZERO), "a1"), Some(Status::Dead { .. })), "the safety net");
        // A removal behind a lost event, likewise.
        std::fs::remove_dir_all(c.dir("a1")).unwrap();
        assert!(l.list(&c, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_container_with_a_health_check_is_read_on_every_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let mut l = Listing::default();
        let dir = c.dir("a1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut record = record_json("a1", "web");
        record["health"] = serde_json::json!({
            "test": ["CMD", "true"], "interval_ms": 1000, "timeout_ms": 1000, "retries": 3, "start_period_ms": 0,
        });
        crate::files::write_replace(&dir.join("container.json"), record.to_string().as_bytes()).unwrap();
        recorded(&c, "b2");
        assert!(l.list(&c, NEVER).iter().any(|c| c.record.health.is_some()), "its check is recorded");
        let before = l.reads;
        l.list(&c, NEVER);
        assert_eq!(l.reads, before + 1, "its verdict is written below its directory: read each time");
    }
}
