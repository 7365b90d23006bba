//! The state the workers keep, behind one narrow trait per effect, each with an
//! implementation per engine. Every write is idempotent and last-write-wins by `created_at`,
//! so redelivered and late events never undo newer ones.

use std::sync::Arc;
use std::time::Duration;

use crate::{Engine, Keys, Lease, StoreError};

mod memory;
mod redis;
mod store;

pub use store::{
    Applied, LatestLocation, Location, Locations, Subscription, Subscriptions, TokenCache,
    UserState, WelcomeSends, GEO_MAX_LATITUDE,
};

/// Every effect store on one engine, for the roles to take what they need.
#[derive(Debug, Clone)]
pub struct EffectStores {
    pub engine: Engine,
    pub subscriptions: Arc<dyn Subscriptions>,
    pub locations: Arc<dyn Locations>,
    pub welcome: Arc<dyn WelcomeSends>,
    pub tokens: Arc<dyn TokenCache>,
}

impl EffectStores {
    /// A welcome's send claim on a probe id, and its release: checked at start-up (see
    /// [`Engine::check_at_start`]) and by `/readyz`.
    pub async fn round_trip(&self) -> Result<(), StoreError> {
        let id = crate::lease::probe_id();
        match self
            .welcome
            .begin_send(&id, "check", Duration::from_secs(10))
            .await?
        {
            Lease::Claimed => self.welcome.abandon_send(&id, "check").await,
            found => Err(StoreError::Batch {
                reason: format!("the probe claim found {found:?}"),
                outage: false,
            }),
        }
    }

    /// The effect stores on `engine`, with keys under `prefix`.
    pub fn open(engine: &Engine, prefix: &str) -> EffectStores {
        let keys = Keys::new(prefix);
        fn all<T: Subscriptions + Locations + WelcomeSends + TokenCache + 'static>(
            engine: &Engine,
            store: Arc<T>,
        ) -> EffectStores {
            EffectStores {
                engine: engine.clone(),
                subscriptions: store.clone(),
                locations: store.clone(),
                welcome: store.clone(),
                tokens: store,
            }
        }
        match engine {
            Engine::Memory => all(engine, Arc::new(memory::MemoryEffects::new(keys))),
            Engine::Redis(redis) => all(
                engine,
                Arc::new(redis::RedisEffects::new(redis.clone(), keys)),
            ),
        }
    }
}
