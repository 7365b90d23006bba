//! A component's load: its authorization events (every authorizer's `authorized`, a ticket now
//! and then), answered `success` before the authorizers' pushes go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::component::Component;
use crate::push::Target;
use crate::run::{run, send, Accept, Load, Outcome, Retry};

/// What a set of authorization events did.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub retried: u64,
    pub acked_ids: HashSet<String>,
}

impl Tally {
    fn record(&mut self, ok: bool, id: schemas::EventId) {
        self.sent += 1;
        if ok {
            self.acked += 1;
            self.acked_ids.insert(id.into());
        } else {
            self.failed += 1;
        }
    }

    /// The figures for the report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent, "acked": self.acked, "failed": self.failed, "retried": self.retried,
        })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sends every authorizer's `authorized` event over `connections` connections, each retried
/// like WeChat until answered `success`.
pub async fn authorize(
    addr: &str,
    component: &Component,
    authorizers: &[Target],
    connections: usize,
    retry: &Retry,
) -> Tally {
    let now = unix_now();
    let requests: Arc<Vec<_>> = Arc::new(
        authorizers
            .iter()
            .map(|a| component.authorized(a, now))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections.clamp(1, requests.len().max(1)))
        .map(|_| {
            let (requests, next, retried) = (
                Arc::clone(&requests),
                Arc::clone(&next),
                Arc::clone(&retried),
            );
            let (addr, retry) = (addr.to_owned(), retry.clone());
            tokio::spawn(async move {
                let mut sender = None;
                let mut done = Vec::new();
                while let Some(request) =
                    requests.get(next.fetch_add(1, Ordering::Relaxed) as usize)
                {
                    let ok = send(
                        &mut sender,
                        &addr,
                        &retry,
                        request,
                        Accept::Success,
                        &retried,
                    )
                    .await;
                    done.push((ok, request.id.clone()));
                }
                done
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        for (ok, id) in task.await.unwrap_or_default() {
            tally.record(ok, id);
        }
    }
    tally.retried = retried.load(Ordering::Relaxed);
    tally
}

/// Sends a `component_verify_ticket` push now and then every `interval`, as WeChat does,
/// until `stop` fires (a ticket under way is finished first).
pub async fn tickets(
    addr: String,
    component: Component,
    interval: Duration,
    retry: Retry,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Tally {
    let mut sender = None;
    let mut tally = Tally::default();
    let retried = AtomicU64::new(0);
    for n in 0u64.. {
        let request = component.ticket(n, unix_now());
        let ok = send(
            &mut sender,
            &addr,
            &retry,
            &request,
            Accept::Success,
            &retried,
        )
        .await;
        tally.record(ok, request.id);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => break,
        }
    }
    tally.retried = retried.load(Ordering::Relaxed);
    tally
}

/// What a component's load did: its authorization events, and the authorizers' pushes.
#[derive(Debug)]
pub struct ComponentOutcome {
    pub authorizations: Tally,
    pub tickets: Tally,
    /// `None` when no authorization was answered `success`: the pushes were not sent.
    pub load: Option<Outcome>,
}

/// Runs a load for `component`'s authorizers (the load's targets): a ticket push at the start
/// and every `ticket_interval` until the end, and every authorizer's `authorized` answered
/// before its first push.
pub async fn run_component(
    load: Load,
    component: &Component,
    ticket_interval: Duration,
) -> ComponentOutcome {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let tickets = tokio::spawn(tickets(
        load.addr.clone(),
        component.clone(),
        ticket_interval,
        load.retry.clone(),
        stopped,
    ));
    let authorizations = authorize(
        &load.addr,
        component,
        &load.targets,
        load.connections,
        &load.retry,
    )
    .await;
    let load = if authorizations.acked == 0 {
        None
    } else {
        Some(run(load).await)
    };
    let _ = stop.send(());
    ComponentOutcome {
        authorizations,
        tickets: tickets.await.unwrap_or_default(),
        load,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;
    use crate::run::test_load;
    use wechat::decrypt::AesKey;
    use wechat::parse::{parse_document, Push};
    use wechat::verify::check;

    use crate::component::testing::KEY;

    /// What the fake ingress took, in the order it took it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Took {
        /// An authorization event: its InfoType, AuthorizerAppid, id.
        Auth(String, Option<String>, String),
        /// An authorizer's push: the route's AppID, ToUserName, id.
        Push(String, String, String),
    }

    #[derive(Default)]
    struct Fake {
        took: Vec<Took>,
        /// Nonces of authorization events answered once without `success`.
        tried: std::collections::HashSet<String>,
        refused: u64,
        requests: Vec<String>,
    }

    fn text(fields: &[(String, serde_json::Value)], name: &str) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    }

    /// Checks a request as the ingress would for component `wxcomponent` (token `ctoken`):
    /// both signatures, the envelope, decryption for the component's AppID.
    fn open(path_and_query: &str, body: &[u8]) -> Result<(String, String, String), String> {
        let (path, query) = path_and_query.split_once('?').ok_or("no query")?;
        let q = wechat::Query::parse(Some(query));
        let (ts, nonce) = (q.timestamp.clone().unwrap(), q.nonce.clone().unwrap());
        check(&q.signature.unwrap(), &mut ["ctoken", &ts, &nonce]).map_err(|e| e.to_string())?;
        if q.encrypt_type.as_deref() != Some("aes") {
            return Err("not encrypted".into());
        }
        let envelope = parse_document(body).map_err(|e| e.to_string())?;
        let encrypt = text(&envelope, "Encrypt").ok_or("no Encrypt")?;
        check(
            &q.msg_signature.unwrap(),
            &mut ["ctoken", &ts, &nonce, &encrypt],
        )
        .map_err(|e| e.to_string())?;
        let xml = AesKey::parse(KEY)
            .unwrap()
            .decrypt(&encrypt, "wxcomponent")
            .map_err(|e| e.to_string())?;
        let xml = String::from_utf8(xml).map_err(|e| e.to_string())?;
        let outer = if path.ends_with("/auth") {
            (text(&envelope, "AppId") == Some("wxcomponent".into())).then_some(())
        } else {
            let inner = Push::try_from(xml.as_bytes()).map_err(|e| e.to_string())?;
            (text(&envelope, "ToUserName") == Some(inner.to_user)).then_some(())
        };
        outer.ok_or("envelope and message disagree")?;
        Ok((path.to_owned(), nonce, xml))
    }

    /// A fake ingress serving component `wxcomponent` below `/wechat`: it answers the first
    /// attempt at each authorization event 200 without `success` (so WeChat must retry), and
    /// `refuse_auth` refuses every authorization event with 403.
    async fn fake_ingress(refuse_auth: bool) -> (String, Arc<Mutex<Fake>>) {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let addr = crate::servers::fake(Arc::clone(&fake), move |fake, path_and_query, body| {
            fake.requests.push(path_and_query.clone());
            let Ok((path, nonce, xml)) = open(&path_and_query, &body) else {
                fake.refused += 1;
                return (403, "");
            };
            if path == "/wechat/component/auth" {
                if refuse_auth {
                    return (403, "");
                }
                if fake.tried.insert(nonce) {
                    return (200, "");
                }
                let push = Push::component(xml.as_bytes()).unwrap();
                let fields = parse_document(xml.as_bytes()).unwrap();
                let event = wechat::normalize::normalize_component(push, String::new()).unwrap();
                fake.took.push(Took::Auth(
                    text(&fields, "InfoType").unwrap(),
                    text(&fields, "AuthorizerAppid"),
                    event.id.to_string(),
                ));
                return (200, "success");
            }
            let Some(appid) = path.strip_prefix("/wechat/component/") else {
                fake.refused += 1;
                return (404, "");
            };
            let push = Push::try_from(xml.as_bytes()).unwrap();
            let to_user = push.to_user.clone();
            let event = wechat::normalize::normalize_on(push, String::new(), Some(appid)).unwrap();
            fake.took
                .push(Took::Push(appid.to_owned(), to_user, event.id.to_string()));
            (200, "")
        })
        .await;
        (addr, fake)
    }

    fn component_load(addr: &str, component: &Component, authorizers: u64, count: u64) -> Load {
        test_load(
            addr,
            (0..authorizers).map(|i| component.authorizer(i)).collect(),
            component.signer().clone(),
            count,
        )
    }

    fn component() -> Component {
        crate::component::testing::component("/wechat")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_component_load_authorizes_first_then_spreads_its_pushes() {
        let (addr, fake) = fake_ingress(false).await;
        let component = component();
        let load = component_load(&addr, &component, 3, 60);
        let done = tokio::time::timeout(
            Duration::from_secs(120),
            run_component(load, &component, Duration::from_secs(3600)),
        )
        .await
        .expect("the load ends, tickets and all");
        let fake = {
            let fake = fake.lock().unwrap();
            assert_eq!(fake.refused, 0, "{:?}", fake.requests);
            fake.took.clone()
        };
        let outcome = done.load.expect("the pushes were sent");
        assert_eq!((outcome.acked, outcome.failed), (60, 0));
        // Each event retried once, after the answer without `success`.
        let a = &done.authorizations;
        assert_eq!((a.sent, a.acked, a.failed, a.retried), (3, 3, 0, 3));
        let t = &done.tickets;
        assert_eq!((t.sent, t.acked, t.failed, t.retried), (1, 1, 0, 1));

        let mut authorized_at = HashMap::new();
        let mut pushes: HashMap<String, Vec<usize>> = HashMap::new();
        let mut took_ids = std::collections::HashSet::new();
        for (at, took) in fake.iter().enumerate() {
            match took {
                Took::Auth(info, appid, id) => {
                    assert!(took_ids.insert(id.clone()), "{id} taken twice");
                    match info.as_str() {
                        "authorized" => {
                            assert!(authorized_at.insert(appid.clone().unwrap(), at).is_none())
                        }
                        "component_verify_ticket" => assert_eq!(appid, &None),
                        other => panic!("{other}"),
                    }
                }
                Took::Push(appid, to_user, id) => {
                    assert!(took_ids.insert(id.clone()), "{id} taken twice");
                    let i = appid.strip_prefix("wxauthorizer").unwrap();
                    assert_eq!(to_user, &format!("gh_authorizer{i}"));
                    pushes.entry(appid.clone()).or_default().push(at);
                }
            }
        }
        assert_eq!(authorized_at.len(), 3);
        assert_eq!(pushes.len(), 3);
        for (appid, ats) in &pushes {
            assert_eq!(ats.len(), 20, "{appid}");
            // Its authorization was taken before any of its pushes.
            assert!(authorized_at[appid] < ats[0], "{appid}");
        }
        // What wxload counts as acknowledged is what the ingress took, by the same ids.
        let mut acked: std::collections::HashSet<String> = outcome.acked_ids;
        acked.extend(done.authorizations.acked_ids);
        acked.extend(done.tickets.acked_ids);
        assert_eq!(acked, took_ids);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tickets_come_now_and_then_until_stopped() {
        let (addr, fake) = fake_ingress(false).await;
        let retry = Retry {
            timeout: Duration::from_secs(30),
            retries: 3,
            retry_delay: Duration::from_millis(1),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(tickets(
            addr,
            component(),
            Duration::from_millis(20),
            retry,
            stopped,
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while fake.lock().unwrap().took.len() < 3 {
            assert!(Instant::now() < deadline, "fewer than 3 tickets in 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
        let tally = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("stopped tickets end")
            .unwrap();
        let took = fake.lock().unwrap().took.clone();
        assert!(tally.acked >= 3);
        assert_eq!((tally.sent, tally.failed), (tally.acked, 0));
        assert_eq!(took.len() as u64, tally.acked, "{took:?}");
        let ids: std::collections::HashSet<&String> = took
            .iter()
            .map(|t| match t {
                Took::Auth(info, None, id) if info == "component_verify_ticket" => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids.len(), took.len());
        // Stopped means stopped.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.lock().unwrap().took.len(), took.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_pushes_for_a_component_the_ingress_refuses() {
        let (addr, fake) = fake_ingress(true).await;
        let component = component();
        let mut load = component_load(&addr, &component, 2, 50);
        load.retry.retries = 1;
        let done = run_component(load, &component, Duration::from_secs(3600)).await;
        assert!(done.load.is_none());
        assert_eq!(
            (done.authorizations.acked, done.authorizations.failed),
            (0, 2)
        );
        let fake = fake.lock().unwrap();
        assert!(
            fake.requests
                .iter()
                .all(|r| r.starts_with("/wechat/component/auth?")),
            "{:?}",
            fake.requests
        );
    }
}
