//! Instance records on their way to the store: one background thread
//! writes them in the order the catalog changed, so the catalog's lock is
//! never held across a disk write. Dropping the writer closes its queue
//! and joins the thread: queued records reach the store, and the store
//! (with its file lock) is released by the time the catalog is gone.
//!
//! The catalog knows the store only as an [`InstanceStore`], so that the
//! store, which encodes records, may depend on the catalog's types and not
//! the other way round.

use std::sync::mpsc;
use std::thread::JoinHandle;

use super::instances::InstanceRecord;

/// Where instance records are kept (the store; nothing in tests).
pub trait InstanceStore: Send + 'static {
    type Error: std::fmt::Display;

    fn put_instance(&self, record: &InstanceRecord) -> Result<(), Self::Error>;

    fn remove_instance(&self, instance_id: &str) -> Result<(), Self::Error>;
}

/// A boxed store (the server picks one at run time) is a store.
impl<E: std::fmt::Display + 'static> InstanceStore for Box<dyn InstanceStore<Error = E>> {
    type Error = E;

    fn put_instance(&self, record: &InstanceRecord) -> Result<(), E> {
        (**self).put_instance(record)
    }

    fn remove_instance(&self, instance_id: &str) -> Result<(), E> {
        (**self).remove_instance(instance_id)
    }
}

/// A change to persist, in order.
enum Write {
    Put(InstanceRecord),
    Remove(String),
}

/// The ordered writer; a no-op without a store.
#[derive(Debug, Default)]
pub struct Persistence {
    queue: Option<mpsc::Sender<Write>>,
    writer: Option<JoinHandle<()>>,
}

impl Persistence {
    /// Nothing is kept (tests, and catalogs without a data directory).
    pub fn none() -> Self {
        Persistence::default()
    }

    /// Starts the writer thread in front of `store`.
    pub fn spawn<S: InstanceStore>(store: S) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Write>();
        let writer = std::thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || {
                for write in rx {
                    let r = match &write {
                        Write::Put(record) => store.put_instance(record),
                        Write::Remove(id) => store.remove_instance(id),
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "could not persist an instance record");
                    }
                }
            })?;
        Ok(Persistence {
            queue: Some(tx),
            writer: Some(writer),
        })
    }

    pub fn put(&self, record: InstanceRecord) {
        self.send(Write::Put(record));
    }

    pub fn remove(&self, instance_id: String) {
        self.send(Write::Remove(instance_id));
    }

    fn send(&self, write: Write) {
        if let Some(tx) = &self.queue {
            // The writer only stops when the queue closes, i.e. never
            // before this; a send that fails has nowhere to go anyway.
            let _ = tx.send(write);
        }
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::catalog::Health;
    use crate::resource::Name;

    /// Remembers what it was asked to do, in order.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl InstanceStore for Log {
        type Error = std::convert::Infallible;

        fn put_instance(&self, r: &InstanceRecord) -> Result<(), Self::Error> {
            if let Ok(mut log) = self.0.lock() {
                log.push(format!("put {}", r.instance_id));
            }
            Ok(())
        }

        fn remove_instance(&self, id: &str) -> Result<(), Self::Error> {
            if let Ok(mut log) = self.0.lock() {
                log.push(format!("remove {id}"));
            }
            Ok(())
        }
    }

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            service: Name::parse("users").expect("a name"),
            instance_id: id.into(),
            address: "127.0.0.1:1".into(),
            protocol: None,
            labels: Default::default(),
            health: Health::Healthy,
            health_detail: String::new(),
            no_app: false,
        }
    }

    #[test]
    fn every_queued_write_lands_in_order_before_drop_returns() {
        let log = Log::default();
        let p = Persistence::spawn(log.clone()).expect("a thread");
        for i in 0..100 {
            p.put(record(&format!("u-{i}")));
        }
        p.remove("u-0".into());
        drop(p);
        let done = log.0.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(done.len(), 101);
        assert_eq!(done[0], "put u-0");
        assert_eq!(done[99], "put u-99");
        assert_eq!(done[100], "remove u-0");
        // Joined: the store has no other owner left.
        assert_eq!(Arc::strong_count(&log.0), 1);
    }
}
