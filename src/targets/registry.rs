//! The set of targets, as front ends see it. The rotation engine publishes a new list when a
//! reload adds, removes or replaces targets; a lookup is one atomic load.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use super::handle::TargetHandle;
use super::status::Event;

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// Every target, by name, in configuration order; and the event stream they all write to.
#[derive(Debug)]
pub struct Registry {
    targets: ArcSwap<Vec<Arc<TargetHandle>>>,
    events: broadcast::Sender<Event>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            targets: ArcSwap::from_pointee(Vec::new()),
            events: broadcast::channel(EVENT_BACKLOG).0,
        })
    }

    /// A target by name.
    pub fn get(&self, name: &str) -> Option<Arc<TargetHandle>> {
        self.targets
            .load()
            .iter()
            .find(|t| t.name() == name)
            .cloned()
    }

    /// Every target now.
    pub fn all(&self) -> Arc<Vec<Arc<TargetHandle>>> {
        self.targets.load_full()
    }

    /// Rotation, state and drain events from now on, of every target (filter by access).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether every target has a live generation.
    pub fn all_live(&self) -> bool {
        self.targets.load().iter().all(|t| t.current().is_some())
    }

    /// Where new handles send their events.
    pub(crate) fn event_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    /// Publishes a new set of targets.
    pub(crate) fn publish(&self, targets: Vec<Arc<TargetHandle>>) {
        self.targets.store(Arc::new(targets));
    }
}
