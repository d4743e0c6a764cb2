//! What one discovery stream has been sent, and what brings its sidecar up
//! to date: the views of the services it wants whose generation moved
//! (built once per change and shared by every stream, see `ViewCache`),
//! each diffed against what this stream last got; and the address map,
//! only for a sidecar that intercepts. A change to one service costs each
//! stream that wants it a diff, and every other stream a few generation
//! look-ups — never a walk over the whole catalog.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::Notify;

use super::{Catalog, MAX_WANTED, ServiceAddresses, ServiceUpdate, ServiceView};
use crate::resource::Name;

/// One stream's side of the push: what it wants and what it was sent.
#[derive(Debug)]
pub struct PushState {
    /// The stream's number in the catalog.
    stream: u64,
    /// Woken when a wanted service changes.
    notify: Arc<Notify>,
    /// How many of `wanted` the catalog wakes this stream for.
    watched: usize,
    /// The sidecar's own service: only its updates carry the inbound policy.
    own: Name,
    /// The sidecar intercepts its app's connections: it needs every
    /// service's addresses.
    intercept: bool,
    wanted: BTreeSet<Name>,
    /// Per wanted service, the generation last looked at.
    seen: HashMap<Name, u64>,
    /// Per wanted service, what the sidecar was last sent (shared).
    sent: HashMap<Name, Arc<ServiceView>>,
    /// The address map last sent (`None` before the first push, and always
    /// for a sidecar that does not intercept).
    sent_addresses: Option<Arc<Vec<ServiceAddresses>>>,
}

/// What to send now.
#[derive(Debug, Default)]
pub struct Pending {
    pub services: Vec<ServiceUpdate>,
    /// The address map, when the sidecar intercepts and it changed (in
    /// every full state).
    pub addresses: Option<Arc<Vec<ServiceAddresses>>>,
    /// Services added to what the stream wants (its routes' backends).
    pub added: Vec<Name>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.addresses.is_none()
    }
}

impl PushState {
    /// For the catalog's stream `stream`; `wanted` holds the sidecar's own
    /// service too.
    pub fn new(stream: u64, own: Name, wanted: BTreeSet<Name>, intercept: bool) -> Self {
        PushState {
            stream,
            notify: Arc::new(Notify::new()),
            watched: 0,
            own,
            intercept,
            wanted,
            seen: HashMap::new(),
            sent: HashMap::new(),
            sent_addresses: None,
        }
    }

    /// Resolves when a service the stream wants may have changed.
    pub fn changed(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Whether the stream must look at every change of the catalog (the
    /// address map covers every service).
    pub fn needs_every_change(&self) -> bool {
        self.intercept
    }

    pub fn wanted(&self) -> &BTreeSet<Name> {
        &self.wanted
    }

    /// More services the sidecar wants (the caller keeps within
    /// [`MAX_WANTED`]).
    pub fn want(&mut self, names: impl IntoIterator<Item = Name>) {
        self.wanted.extend(names);
    }
}

impl Catalog {
    /// What `state`'s sidecar needs now: everything when `full`, else what
    /// changed since it was last sent something; records it as sent.
    pub fn pending(&self, state: &mut PushState, full: bool) -> Pending {
        if full {
            state.seen.clear();
        }
        let (views, added) = {
            let mut parts = self.lock();
            let found =
                super::views_with_backends(&mut parts, &mut state.wanted, &state.seen, MAX_WANTED);
            // Under the same lock as the views: a change after them wakes us.
            if state.watched != state.wanted.len() {
                parts
                    .wakers
                    .watch(state.stream, &state.notify, state.wanted.iter());
                state.watched = state.wanted.len();
            }
            found
        };
        let mut out = Pending {
            added,
            ..Pending::default()
        };
        if state.intercept {
            let map = self.shared_address_map();
            let same = state
                .sent_addresses
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &map) || **s == *map);
            if full || !same {
                out.addresses = Some(map.clone());
            }
            state.sent_addresses = Some(map);
        }
        for (name, generation, view) in views {
            state.seen.insert(name.clone(), generation);
            let own = name == state.own;
            let old = state.sent.get(&name);
            let change = match old {
                _ if full => Some(view.full(&name, own)),
                // Built for the same generation: nothing new.
                Some(old) if Arc::ptr_eq(old, &view) => None,
                old => view.diff(&name, old.map(|o| &**o), own),
            };
            out.services.extend(change);
            state.sent.insert(name, view);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogConfig;
    use crate::resource::parse_documents;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("a valid name")
    }

    fn service(name: &str, address: &str, timeout: &str) -> Vec<crate::resource::Resource> {
        parse_documents(&format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{protocol: grpc, addresses: [{address}], timeouts: {{request: {timeout}}}}}\n"
        ))
        .expect("a valid Service")
    }

    fn state(stream: u64, intercept: bool) -> PushState {
        PushState::new(
            stream,
            name("caller"),
            BTreeSet::from([name("caller"), name("users")]),
            intercept,
        )
    }

    #[test]
    fn only_a_sidecar_that_intercepts_gets_the_address_map_and_only_when_it_changed() {
        let c = Catalog::in_memory(CatalogConfig::default());
        c.apply(&service("users", "10.0.0.1", "1s"));
        c.apply(&service("other", "10.0.0.2", "1s"));
        let (mut plain, mut intercepting) = (state(1, false), state(2, true));
        let p = c.pending(&mut plain, true);
        assert!(p.addresses.is_none());
        let i = c.pending(&mut intercepting, true);
        assert_eq!(i.addresses.as_ref().map(|a| a.len()), Some(2));
        // A service neither calls changes its timeout: the map is the same.
        c.apply(&service("other", "10.0.0.2", "2s"));
        assert!(c.pending(&mut plain, false).is_empty());
        assert!(c.pending(&mut intercepting, false).is_empty());
        // …and its address: only the sidecar that intercepts is told.
        c.apply(&service("other", "10.0.0.3", "2s"));
        assert!(c.pending(&mut plain, false).is_empty());
        let i = c.pending(&mut intercepting, false);
        assert!(i.services.is_empty());
        assert_eq!(
            i.addresses.map(|a| a[0].addresses.clone()),
            Some(vec!["10.0.0.3".parse().expect("ip")])
        );
    }

    #[test]
    fn a_change_is_built_once_and_shared_by_every_stream_that_wants_it() {
        let c = Catalog::in_memory(CatalogConfig::default());
        c.apply(&service("users", "10.0.0.1", "1s"));
        let (mut a, mut b) = (state(1, false), state(2, false));
        c.pending(&mut a, true);
        c.pending(&mut b, true);
        c.apply(&service("users", "10.0.0.1", "3s"));
        let (pa, pb) = (c.pending(&mut a, false), c.pending(&mut b, false));
        assert_eq!(pa.services.len(), 1);
        assert_eq!(pa.services, pb.services);
        assert!(Arc::ptr_eq(
            &a.sent[&name("users")],
            &b.sent[&name("users")]
        ));
        // Nothing moved since: nothing to send.
        assert!(c.pending(&mut a, false).is_empty());
    }
}
