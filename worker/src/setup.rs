//! The effects a configuration describes: the stores, the WeChat client, and whose
//! credentials speak for each account.

use std::sync::Arc;
use std::time::Duration;

use crate::accounts;
use crate::api::{self, WeChat};
use crate::config::{Config, Role};
use crate::effects::Effects;
use crate::error::StartError;

/// Builds the effects a config describes.
pub async fn effects(config: &Config) -> Result<Arc<Effects>, StartError> {
    let engine = store::Engine::open(config.shared.store_url()?, config.shared.redis_timeout())?;
    let stores = store::effects::EffectStores::open(&engine, &config.shared.key_prefix);
    engine.check_at_start(|| stores.round_trip()).await?;
    let owner = ops::instance_id();
    let mut wechat = WeChat::new(
        &config.settings.api_base,
        Duration::from_millis(config.settings.api_timeout_ms),
        Arc::new(crate::tokens::MemoTokens::over(Arc::clone(&stores.tokens))),
        owner.clone(),
    )?;
    let component = match config.shared.component().map_err(StartError::Accounts)? {
        Some(entry) => match entry.appsecret {
            Some(appsecret) => {
                let store = store::component::open(&engine, &config.shared.key_prefix);
                wechat = wechat.with_components(Arc::clone(&store));
                Some(crate::effects::ComponentEffects {
                    credentials: Arc::new(api::ComponentCredentials {
                        appid: entry.appid,
                        appsecret,
                    }),
                    store,
                    release_check: entry.release_check,
                })
            }
            None => {
                tracing::warn!("WECHAT_COMPONENT_APPSECRET is not set: authorizers' welcome messages are logged, not sent");
                None
            }
        },
        None => None,
    };
    let senders = accounts::Senders::load(&config.shared).map_err(StartError::Accounts)?;
    if !senders.any() && config.roles().contains(&Role::Welcome) {
        tracing::warn!("no AppSecret configured: welcome messages are logged instead of sent");
    }
    Ok(Arc::new(Effects {
        stores,
        wechat,
        senders,
        welcome_text: config.settings.welcome_text.clone(),
        scene_texts: config.settings.welcome_scene_texts.clone(),
        location_history: config.settings.location_history,
        send_lease: Duration::from_millis(config.settings.api_timeout_ms * 2 + 2000),
        owner,
        welcome_max_age: config.settings.welcome_max_age,
        resend_unknown: config.settings.welcome_resend_unknown,
        component,
    }))
}
