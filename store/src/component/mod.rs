//! An Open Platform component's state, shared by the ingress and the `component` worker: the
//! latest `component_verify_ticket`, and for each authorizer whether it is authorized (last
//! write wins by the authorization events' `CreateTime`), its `gh_` id and its refresh token.
//!
//! Every key of one component shares its hash tag `{component_appid}`:
//!
//! | key | what |
//! |---|---|
//! | `{p}:component:{C}:ticket` | hash `ticket`, `created_at`: the newest ticket WeChat pushed |
//! | `{p}:component:{C}:authorizer:{A}` | hash `authorized` (1/0) and `authorized_at`, `user_name` (the `gh_` id), `refresh_token` and `refresh_at` |
//! | `{p}:component:{C}:token`, `…:token_lock` | the component access token and its fetch lock ([`component_token`]) |
//! | `{p}:component:{C}:authorizer_token:{A}`, `…:authorizer_token_lock:{A}` | an authorizer's access token and its fetch lock ([`authorizer_token`]) |

use std::sync::Arc;

use crate::{Engine, Keys};

mod memory;
mod redis;
mod store;

pub use store::{
    authorizer_token, component_token, Admission, Authorization, Authorizer, AuthorizerOf,
    Components, RefreshToken, Ticket, UserName,
};

/// The component store on `engine`, keys under `prefix`. On the memory engine every opening
/// with one prefix shares one state, so the embedded default's ingress and workers see the
/// same tickets and authorizations.
pub fn open(engine: &Engine, prefix: &str) -> Arc<dyn Components> {
    match engine {
        Engine::Memory => memory::shared(prefix),
        Engine::Redis(redis) => Arc::new(redis::RedisComponents::new(
            redis.clone(),
            Keys::new(prefix),
        )),
    }
}
