//! Which discovery streams to wake when a service's view changes: those
//! that want it, and no others. A change to one service then costs the
//! streams of its callers (and its own sidecars) a wake-up each, not every
//! connected stream; a service every sidecar calls still wakes them all,
//! as it must. Streams that need every change (those sent the address map)
//! wait on the catalog's `watch` instead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::resource::Name;

#[derive(Debug, Default)]
pub(super) struct Wakers {
    by_service: HashMap<Name, HashMap<u64, Arc<Notify>>>,
    /// What each stream is registered under, to forget it when it ends.
    by_stream: HashMap<u64, HashSet<Name>>,
}

impl Wakers {
    /// Wakes `stream` (through `notify`) whenever one of `names` changes.
    pub fn watch<'a>(
        &mut self,
        stream: u64,
        notify: &Arc<Notify>,
        names: impl Iterator<Item = &'a Name>,
    ) {
        let mine = self.by_stream.entry(stream).or_default();
        for n in names {
            if mine.insert(n.clone()) {
                self.by_service
                    .entry(n.clone())
                    .or_default()
                    .insert(stream, notify.clone());
            }
        }
    }

    /// The stream ended.
    pub fn forget(&mut self, stream: u64) {
        for n in self.by_stream.remove(&stream).unwrap_or_default() {
            if let Some(streams) = self.by_service.get_mut(&n) {
                streams.remove(&stream);
                if streams.is_empty() {
                    self.by_service.remove(&n);
                }
            }
        }
    }

    /// `services` changed. A stream not waiting yet keeps the wake-up
    /// (`notify_one` stores one), so that none is lost between two looks.
    pub fn wake(&self, services: &[Name]) {
        for s in services {
            for n in self.by_service.get(s).into_iter().flat_map(HashMap::values) {
                n.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("a valid name")
    }

    #[tokio::test]
    async fn only_streams_that_want_a_service_are_woken_and_ended_ones_are_forgotten() {
        let mut w = Wakers::default();
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        w.watch(1, &a, [name("x"), name("y")].iter());
        w.watch(2, &b, [name("y")].iter());
        w.wake(&[name("x")]);
        // `a` holds a wake-up; `b` none.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.notified())
            .await
            .expect("a woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.notified())
                .await
                .is_err()
        );
        w.forget(1);
        assert!(!w.by_service.contains_key(&name("x")));
        assert_eq!(w.by_service[&name("y")].len(), 1);
        assert!(!w.by_stream.contains_key(&1));
    }
}
