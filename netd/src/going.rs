//! Links left for the kernel to delete: the host ends of the veths of
//! endpoints whose container's namespace is being removed (`DetachRequest`'s
//! `netns_going`), and the sandbox ends of their overlay legs. Destroying a namespace deletes its veths, and with them
//! their peers on the host, in the kernel's batched namespace cleanup; a
//! `DeleteLink` of each from netd held the RTNL lock 15–33 ms on its own, which
//! the next container's namespace creation waited on. Passes leave such a
//! link alone for [`GRACE`]; one still there after that (the namespace was
//! pinned by something else) is deleted by the pass that finds it, as any
//! stale endpoint's. Pure, so its rules are table tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::ObservedLink;

/// How long a pass leaves a going link alone: one periodic resync.
pub const GRACE: Duration = crate::service::RESYNC;

#[derive(Debug, Default)]
pub struct Going {
    /// Host link name → when it was left to go.
    links: HashMap<String, Instant>,
}

impl Going {
    /// Marks `names` as going with their namespace, as of `now`.
    pub fn leave(&mut self, names: impl IntoIterator<Item = String>, now: Instant) {
        for n in names {
            self.links.insert(n, now);
        }
    }

    /// `observed` without the links the kernel is still to delete (going,
    /// in their grace, and not `wanted`). Forgets the entries whose links
    /// are gone, whose grace ran out (those links the caller's plan then
    /// deletes), or that are wanted again by a desired state read (at
    /// `read_at`) after they were left: a pass whose desired state was read
    /// before a detach still wants the link, and must neither delete it nor
    /// make the passes after it forget that it goes.
    pub fn spare(
        &mut self,
        observed: Vec<ObservedLink>,
        wanted: impl Fn(&str) -> bool,
        read_at: Instant,
        now: Instant,
    ) -> Vec<ObservedLink> {
        let mut left = observed;
        self.spare_each(&mut [&mut left], wanted, read_at, now);
        left
    }

    /// `spare` for links observed in several namespaces (the overlays'
    /// sandboxes: a container's leg there goes with its namespace too):
    /// each group without the going links; an entry is forgotten when no
    /// group has its link.
    pub fn spare_each(
        &mut self,
        groups: &mut [&mut Vec<ObservedLink>],
        wanted: impl Fn(&str) -> bool,
        read_at: Instant,
        now: Instant,
    ) {
        self.links.retain(|name, left| {
            now < *left + GRACE
                && !(wanted(name) && read_at >= *left)
                && groups.iter().flat_map(|g| g.iter()).any(|l| &l.name == name)
        });
        for g in groups.iter_mut() {
            g.retain(|l| wanted(&l.name) || !self.links.contains_key(&l.name));
        }
    }

    /// No link is going.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LinkKind;

    fn veth(name: &str) -> ObservedLink {
        ObservedLink { name: name.into(), kind: LinkKind::Veth, master: None, mtu: 1500, up: true, addrs: vec![] }
    }

    fn names(links: &[ObservedLink]) -> Vec<&str> {
        links.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn a_going_link_is_spared_in_its_grace_and_left_to_the_plan_after() {
        let t0 = Instant::now();
        let mut g = Going::default();
        g.leave(["shvaaaaaabbbbb".to_string()], t0);
        let observed = || vec![veth("shvaaaaaabbbbb"), veth("shvccccccbbbbb")];
        // (when, wanted, what the plan sees)
        let table: [(Duration, bool, &[&str]); 3] = [
            (Duration::ZERO, false, &["shvccccccbbbbb"]),
            (GRACE - Duration::from_millis(1), false, &["shvccccccbbbbb"]),
            (GRACE, false, &["shvaaaaaabbbbb", "shvccccccbbbbb"]),
        ];
        for (after, wanted, seen) in table {
            let mut g2 = Going::default();
            g2.leave(["shvaaaaaabbbbb".to_string()], t0);
            let left = g2.spare(observed(), |_| wanted, t0 + after, t0 + after);
            assert_eq!(names(&left), seen, "after {after:?}");
        }
        // Out of grace, the entry is forgotten: later passes see the link.
        assert_eq!(g.spare(observed(), |_| false, t0 + GRACE, t0 + GRACE).len(), 2);
        assert!(g.is_empty());
    }

    #[test]
    fn legs_in_several_sandboxes_are_spared_each_and_forgotten_when_none_has_them() {
        let t0 = Instant::now();
        let mut g = Going::default();
        g.leave(["shvaaaaaa11111".to_string(), "shvaaaaaa22222".to_string()], t0);
        let (mut a, mut b) = (vec![veth("shvaaaaaa11111"), veth("shvbbbbbb11111")], vec![veth("shvaaaaaa22222")]);
        g.spare_each(&mut [&mut a, &mut b], |_| false, t0, t0);
        assert_eq!((names(&a), names(&b)), (vec!["shvbbbbbb11111"], vec![]));
        // The kernel deleted the first; the second is still there.
        let (mut a, mut b) = (vec![veth("shvbbbbbb11111")], vec![veth("shvaaaaaa22222")]);
        g.spare_each(&mut [&mut a, &mut b], |_| false, t0, t0);
        assert_eq!(names(&b), Vec::<&str>::new(), "still spared");
        g.spare_each(&mut [&mut vec![], &mut vec![]], |_| false, t0, t0);
        assert!(g.is_empty(), "no sandbox has them: forgotten");
    }

    #[test]
    fn a_link_wanted_again_or_gone_is_forgotten() {
        let t0 = Instant::now();
        let mut g = Going::default();
        g.leave(["shvaaaaaabbbbb".to_string()], t0);
        let left = g.spare(vec![veth("shvaaaaaabbbbb")], |n| n == "shvaaaaaabbbbb", t0, t0);
        assert_eq!(names(&left), ["shvaaaaaabbbbb"], "the plan keeps a wanted link");
        assert!(g.is_empty());

        g.leave(["shvaaaaaabbbbb".to_string()], t0);
        assert!(g.spare(vec![], |_| false, t0, t0).is_empty());
        assert!(g.is_empty(), "the kernel deleted it: nothing to remember");
    }

    #[test]
    fn a_pass_that_read_its_state_before_the_detach_keeps_the_link_and_the_mark() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(10);
        let mut g = Going::default();
        g.leave(["shvaaaaaabbbbb".to_string()], later);
        // A pass whose desired state predates the detach still wants the link: it keeps it…
        let left = g.spare(vec![veth("shvaaaaaabbbbb")], |_| true, t0, later);
        assert_eq!(names(&left), ["shvaaaaaabbbbb"]);
        // …and the next pass, which no longer wants it, spares it rather than deleting it.
        let left = g.spare(vec![veth("shvaaaaaabbbbb")], |_| false, later, later);
        assert!(left.is_empty(), "still going: {left:?}");
    }
}
