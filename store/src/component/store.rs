//! The component store's trait and the types it speaks, which every engine implements.

use crate::effects::Applied;
use crate::fut::Fut;

/// What a push on an authorizer's route may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The authorizer withdrew its authorization (and has not authorized again since).
    Unauthorized,
    /// The push names another account than the authorizer's known `gh_` id.
    OtherAccount {
        known: String,
    },
}

/// An authorizer's `gh_` id, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserName<'a> {
    /// Its first durable push's `ToUserName`: kept unless one is known.
    Learned(&'a str),
    /// WeChat's API (`api_get_authorizer_info`): replaces one learned from a push.
    FromApi(&'a str),
}

/// What is known of one authorizer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authorizer {
    /// `None` before any authorization event was recorded.
    pub authorized: Option<bool>,
    pub authorized_at: Option<i64>,
    pub user_name: Option<String>,
    pub refresh_token: Option<String>,
    /// The `created_at` of the authorization that gave the refresh token.
    pub refresh_at: Option<i64>,
}

/// The name under which [`crate::effects::TokenCache`] keeps a component's access token:
/// `{p}:component:{C}:token` (an AppID never holds a `/`).
pub fn component_token(component_appid: &str) -> String {
    format!("{}{component_appid}", crate::keys::COMPONENT_TOKEN)
}

/// The name under which [`crate::effects::TokenCache`] keeps an authorizer's access token:
/// `{p}:component:{C}:authorizer_token:{A}`, apart from any account's `{p}:token:{appid}`
/// (an account configured with the same AppID never lends its token to the route).
pub fn authorizer_token(component_appid: &str, authorizer_appid: &str) -> String {
    format!(
        "{}{component_appid}/{authorizer_appid}",
        crate::keys::COMPONENT_TOKEN
    )
}

/// One authorizer of one component: whom a read or a write is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizerOf<'a> {
    pub component: &'a str,
    pub authorizer: &'a str,
}

/// A `component_verify_ticket` WeChat pushed at `created_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket<'a> {
    pub component: &'a str,
    pub ticket: &'a str,
    pub created_at: i64,
}

/// An authorization change at its event's `created_at`: `authorized`/`updateauthorized`
/// (true) or `unauthorized` (false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub of: AuthorizerOf<'a>,
    pub authorized: bool,
    pub created_at: i64,
}

/// The refresh token the authorization of `created_at` gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshToken<'a> {
    pub of: AuthorizerOf<'a>,
    pub token: &'a str,
    pub created_at: i64,
}

/// A component's state. Every write is last-write-wins by its event's `created_at`.
pub trait Components: Send + Sync + std::fmt::Debug {
    /// Keeps the ticket unless a newer one is kept.
    fn set_ticket<'a>(&'a self, ticket: Ticket<'a>) -> Fut<'a, ()>;

    fn ticket<'a>(&'a self, component: &'a str) -> Fut<'a, Option<String>>;

    /// Records an authorization change; a withdrawal also forgets the refresh token. A change
    /// older than the one recorded changes nothing; of one second, the withdrawal wins.
    fn set_authorized<'a>(&'a self, change: Authorization<'a>) -> Fut<'a, Applied>;

    /// Whether a push on the authorizer's route naming `user_name` (its `ToUserName`) may
    /// pass. Reads only: what a push teaches is [`Components::write_user_name`]'s, once it is
    /// durable (so a replay a later check refuses teaches nothing).
    fn admit<'a>(&'a self, of: AuthorizerOf<'a>, user_name: &'a str) -> Fut<'a, Admission>;

    /// Keeps an authorizer's `gh_` id.
    fn write_user_name<'a>(&'a self, of: AuthorizerOf<'a>, name: UserName<'a>) -> Fut<'a, ()>;

    /// Keeps the refresh token, unless the authorizer withdrew since (or a newer
    /// authorization's token is kept).
    fn set_refresh_token<'a>(&'a self, token: RefreshToken<'a>) -> Fut<'a, Applied>;

    fn authorizer<'a>(&'a self, of: AuthorizerOf<'a>) -> Fut<'a, Authorizer>;
}
