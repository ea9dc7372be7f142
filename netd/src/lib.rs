//! netd: the only process that changes a host's network (links, addresses,
//! routes, netfilter), as a level-triggered reconcile loop: the daemon hands
//! it the desired state (`model`), it observes the kernel, `plan` computes
//! the actions with a pure function, and the system layer applies them.
//! Addresses come from `ipam`; netfilter rules are generated whole by
//! `rules`. It touches only objects it named (`model::is_ours`).
//!
//! The embedded DNS server (127.0.0.11 in every attached container) is
//! `dns` (names, wire format; pure) and `dnsd` (its sockets); `service` is
//! the netd process: state, API, and the loop that drives it all. The
//! client-side VIP load balancer of cluster services (an nft table in each
//! container's namespace) is `lb` (its planner; pure) and `lb_sys`; the
//! routing mesh's host table and reply steering are `ingress` (pure) and
//! `ingress_sys`. Macvlan networks' endpoints and host shims are `macvlan`
//! (pure) and `macvlan_sys`. Which callers share a pass is `passes` (pure); which host links
//! are left for the kernel to delete with their namespace, `going` (pure).

pub mod arp;
pub mod dns;
pub mod dnsd;
pub mod encrypted;
pub mod going;
pub mod ingress;
pub mod ingress_sys;
pub mod ipam;
pub mod lb;
pub mod lb_sys;
pub mod linkdump;
pub mod macvlan;
pub mod macvlan_sys;
pub mod model;
pub mod net;
pub mod nft_elems;
pub mod nft_table;
pub mod overlay;
pub mod passes;
pub mod plan;
pub mod rules;
pub mod service;
pub mod sys;
pub mod wg;
