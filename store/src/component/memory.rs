//! The component store in one process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::store::{
    Admission, Authorization, Authorizer, AuthorizerOf, Components, RefreshToken, Ticket, UserName,
};
use crate::effects::Applied;
use crate::fut::Fut;

#[derive(Debug, Default)]
struct State {
    tickets: HashMap<String, (i64, String)>,
    authorizers: HashMap<(String, String), Authorizer>,
}

#[derive(Debug, Default)]
pub(super) struct MemoryComponents {
    state: Mutex<State>,
}

/// The one memory store of a key prefix in this process.
pub(super) fn shared(prefix: &str) -> Arc<dyn Components> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<MemoryComponents>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Mutex::default)
        .lock()
        .expect("stores lock");
    stores.entry(prefix.to_owned()).or_default().clone()
}

impl MemoryComponents {
    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut State) -> T) -> Fut<'_, T> {
        let result = f(&mut self.state.lock().expect("memory store lock"));
        Box::pin(async move { Ok(result) })
    }
}

fn key(of: AuthorizerOf) -> (String, String) {
    (of.component.to_owned(), of.authorizer.to_owned())
}

impl Components for MemoryComponents {
    fn set_ticket<'a>(&'a self, t: Ticket<'a>) -> Fut<'a, ()> {
        self.with(|s| {
            let kept = s.tickets.get(t.component).map(|(at, _)| *at);
            if kept.is_none_or(|at| t.created_at >= at) {
                s.tickets
                    .insert(t.component.to_owned(), (t.created_at, t.ticket.to_owned()));
            }
        })
    }

    fn ticket<'a>(&'a self, component: &'a str) -> Fut<'a, Option<String>> {
        self.with(|s| s.tickets.get(component).map(|(_, t)| t.clone()))
    }

    fn set_authorized<'a>(&'a self, change: Authorization<'a>) -> Fut<'a, Applied> {
        let Authorization {
            of,
            authorized,
            created_at,
        } = change;
        self.with(move |s| {
            let a = s.authorizers.entry(key(of)).or_default();
            if let Some(at) = a.authorized_at {
                if created_at < at
                    || (created_at == at && (authorized || a.authorized == Some(false)))
                {
                    return Applied::Stale;
                }
            }
            a.authorized = Some(authorized);
            a.authorized_at = Some(created_at);
            if !authorized {
                a.refresh_token = None;
                a.refresh_at = None;
            }
            Applied::Yes
        })
    }

    fn admit<'a>(&'a self, of: AuthorizerOf<'a>, user_name: &'a str) -> Fut<'a, Admission> {
        self.with(|s| {
            let Some(a) = s.authorizers.get(&key(of)) else {
                return Admission::Admitted;
            };
            if a.authorized == Some(false) {
                return Admission::Unauthorized;
            }
            match &a.user_name {
                Some(known) if known != user_name => Admission::OtherAccount {
                    known: known.clone(),
                },
                _ => Admission::Admitted,
            }
        })
    }

    fn write_user_name<'a>(&'a self, of: AuthorizerOf<'a>, name: UserName<'a>) -> Fut<'a, ()> {
        self.with(|s| {
            let kept = &mut s.authorizers.entry(key(of)).or_default().user_name;
            match name {
                UserName::Learned(name) => drop(kept.get_or_insert_with(|| name.to_owned())),
                UserName::FromApi(name) => *kept = Some(name.to_owned()),
            }
        })
    }

    fn set_refresh_token<'a>(&'a self, token: RefreshToken<'a>) -> Fut<'a, Applied> {
        self.with(|s| {
            let a = s.authorizers.entry(key(token.of)).or_default();
            let at = token.created_at;
            let current = a.authorized != Some(false)
                && a.authorized_at.is_none_or(|authorized| at >= authorized)
                && a.refresh_at.is_none_or(|refreshed| at >= refreshed);
            if !current {
                return Applied::Stale;
            }
            a.refresh_token = Some(token.token.to_owned());
            a.refresh_at = Some(at);
            Applied::Yes
        })
    }

    fn authorizer<'a>(&'a self, of: AuthorizerOf<'a>) -> Fut<'a, Authorizer> {
        self.with(|s| s.authorizers.get(&key(of)).cloned().unwrap_or_default())
    }
}
