//! One suite for every engine of the Open Platform component store.

mod common;

use std::time::Duration;

use store::component::{
    self, Admission, Authorization, AuthorizerOf, Components, RefreshToken, Ticket, UserName,
};
use store::effects::Applied;
use store::Engine;
use testkit::{unique, RedisServer};

/// The store's calls for one authorizer of component `c`, answered (the suite's steps).
struct Authorizer<'a> {
    s: &'a dyn Components,
    c: &'a str,
    appid: &'a str,
}

impl Authorizer<'_> {
    fn of(&self) -> AuthorizerOf<'_> {
        AuthorizerOf {
            component: self.c,
            authorizer: self.appid,
        }
    }

    async fn admit(&self, user_name: &str) -> Admission {
        self.s.admit(self.of(), user_name).await.unwrap()
    }

    async fn authorize(&self, authorized: bool, created_at: i64) -> Applied {
        let of = self.of();
        let change = Authorization {
            of,
            authorized,
            created_at,
        };
        self.s.set_authorized(change).await.unwrap()
    }

    async fn keep_refresh(&self, token: &str, created_at: i64) -> Applied {
        let (of, token) = (self.of(), token);
        let token = RefreshToken {
            of,
            token,
            created_at,
        };
        self.s.set_refresh_token(token).await.unwrap()
    }

    async fn state(&self) -> store::component::Authorizer {
        self.s.authorizer(self.of()).await.unwrap()
    }

    async fn write_user_name(&self, name: UserName<'_>) {
        self.s.write_user_name(self.of(), name).await.unwrap()
    }
}

async fn suite(s: &dyn Components) {
    let c = "wxcomponent";
    let wxa = Authorizer { s, c, appid: "wxa" };
    let wxb = Authorizer { s, c, appid: "wxb" };

    // The newest ticket by CreateTime is kept, whatever order they come in.
    let ticket = |ticket, created_at| Ticket {
        component: c,
        ticket,
        created_at,
    };
    assert_eq!(s.ticket(c).await.unwrap(), None);
    s.set_ticket(ticket("t200", 200)).await.unwrap();
    s.set_ticket(ticket("t100", 100)).await.unwrap();
    assert_eq!(s.ticket(c).await.unwrap().as_deref(), Some("t200"));
    s.set_ticket(ticket("t300", 300)).await.unwrap();
    assert_eq!(s.ticket(c).await.unwrap().as_deref(), Some("t300"));
    assert_eq!(s.ticket("wxother").await.unwrap(), None, "per component");

    // An authorizer never seen is admitted, and admitting teaches nothing (a replay a later
    // check refuses must not); its first durable push teaches its gh_ id.
    assert_eq!(wxa.admit("gh_a").await, Admission::Admitted);
    assert_eq!(wxa.admit("gh_other").await, Admission::Admitted);
    assert_eq!(wxa.state().await, Default::default(), "nothing kept");
    wxa.write_user_name(UserName::Learned("gh_a")).await;
    wxa.write_user_name(UserName::Learned("gh_later")).await;
    assert_eq!(wxa.admit("gh_a").await, Admission::Admitted);
    assert_eq!(
        wxa.admit("gh_b").await,
        Admission::OtherAccount {
            known: "gh_a".into()
        }
    );
    // WeChat's API has the last word on the gh_ id.
    wxa.write_user_name(UserName::FromApi("gh_real")).await;
    assert!(matches!(
        wxa.admit("gh_a").await,
        Admission::OtherAccount { .. }
    ));
    assert_eq!(wxa.admit("gh_real").await, Admission::Admitted);

    // Authorization: last write wins by CreateTime; the refresh token follows it.
    assert_eq!(wxa.authorize(true, 100).await, Applied::Yes);
    assert_eq!(wxa.keep_refresh("r100", 100).await, Applied::Yes);
    let a = wxa.state().await;
    assert_eq!((a.authorized, a.authorized_at), (Some(true), Some(100)));
    assert_eq!(a.refresh_token.as_deref(), Some("r100"));
    assert_eq!(a.user_name.as_deref(), Some("gh_real"));
    assert_eq!(wxa.keep_refresh("r90", 90).await, Applied::Stale);
    assert_eq!(
        wxa.authorize(true, 150).await,
        Applied::Yes,
        "updateauthorized"
    );
    assert_eq!(wxa.keep_refresh("r150", 150).await, Applied::Yes);
    assert_eq!(
        wxa.keep_refresh("r100", 100).await,
        Applied::Stale,
        "a late exchange of an older code never replaces a newer token"
    );

    // A withdrawal refuses the authorizer's pushes and forgets its refresh token.
    assert_eq!(wxa.authorize(false, 200).await, Applied::Yes);
    assert_eq!(wxa.admit("gh_real").await, Admission::Unauthorized);
    let a = wxa.state().await;
    assert_eq!((a.authorized, a.refresh_token), (Some(false), None));
    assert_eq!(
        wxa.keep_refresh("r150", 150).await,
        Applied::Stale,
        "an exchange that finishes after the withdrawal keeps nothing"
    );
    assert_eq!(wxa.authorize(true, 180).await, Applied::Stale, "late");
    assert_eq!(
        wxa.authorize(true, 200).await,
        Applied::Stale,
        "a tie: withdrawn"
    );
    assert_eq!(wxa.admit("gh_real").await, Admission::Unauthorized);
    // Until it authorizes again.
    assert_eq!(wxa.authorize(true, 300).await, Applied::Yes);
    assert_eq!(wxa.admit("gh_real").await, Admission::Admitted);
    assert_eq!(wxa.keep_refresh("r300", 300).await, Applied::Yes);
    // Withdrawn and authorized in one second: withdrawn, in either order.
    assert_eq!(wxb.authorize(true, 50).await, Applied::Yes);
    assert_eq!(wxb.authorize(false, 50).await, Applied::Yes);
    assert_eq!(wxb.authorize(true, 50).await, Applied::Stale);
    assert_eq!(wxb.state().await.authorized, Some(false));
    // Nothing of one authorizer is another's.
    assert_eq!(
        Authorizer {
            s,
            c,
            appid: "wxnone"
        }
        .state()
        .await,
        Default::default()
    );
    assert_eq!(
        Authorizer {
            s,
            c: "wxother",
            appid: "wxa"
        }
        .state()
        .await,
        Default::default()
    );
}

#[tokio::test]
async fn memory_engine() {
    let engine = Engine::open("memory://", Duration::from_secs(1)).unwrap();
    let prefix = unique("k");
    suite(&*component::open(&engine, &prefix)).await;
    // Every opening of one prefix shares the state (the embedded ingress and workers).
    let again = component::open(&engine, &prefix);
    assert_eq!(
        again.ticket("wxcomponent").await.unwrap().as_deref(),
        Some("t300")
    );
    let other = component::open(&engine, &unique("k"));
    assert_eq!(other.ticket("wxcomponent").await.unwrap(), None);
}

#[tokio::test]
async fn redis_engine() {
    let redis = RedisServer::start();
    let prefix = unique("k");
    let engine = Engine::open(&redis.url(), Duration::from_secs(1)).unwrap();
    suite(&*component::open(&engine, &prefix)).await;
    // The keys the README names.
    let mut conn = redis.conn();
    let mut field = |key: &str, field: &str| -> String {
        redis::Commands::hget(
            &mut conn,
            format!("{prefix}:component:{{wxcomponent}}:{key}"),
            field,
        )
        .unwrap()
    };
    assert_eq!(field("ticket", "ticket"), "t300");
    assert_eq!(field("authorizer:wxa", "refresh_token"), "r300");
}

async fn on_url(url: &str) {
    let engine = Engine::open(url, Duration::from_secs(1)).unwrap();
    suite(&*component::open(&engine, &unique("k"))).await;
}

on_every_deployment!(on_url);
