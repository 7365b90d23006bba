//! A fake WeChat API: `cgi-bin/stable_token` and `cgi-bin/message/custom/send`, with
//! expiring tokens, injected errcodes and delays; and the Open Platform component APIs
//! (`cgi-bin/component/api_component_token`, `api_query_auth`, `api_authorizer_token`,
//! `api_get_authorizer_info`), with authorization codes a test hands out.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What the fake WeChat API saw and how it behaves.
#[derive(Debug, Default)]
pub struct FakeState {
    /// (touser, content) of every accepted send.
    pub sends: Vec<(String, String)>,
    /// Every stable_token call's `force_refresh`.
    pub token_fetches: Vec<bool>,
    /// Every stable_token call's `appid`: whose credentials asked.
    pub token_appids: Vec<String>,
    /// Tokens WeChat no longer accepts (42001).
    pub expired: HashSet<String>,
    /// errcode to answer for a user, and how many times (u32::MAX = always).
    pub failures: HashMap<String, (i64, u32)>,
    /// Delay before answering a send (taken, and recorded, at once).
    pub send_delay: Duration,
    /// stable_token always answers this token, forced or not (and sends refuse it).
    pub stuck_token: Option<String>,
    /// Tokens sends refuse (40001) though stable_token still hands them out unforced, as
    /// WeChat does for a token invalidated before its expiry.
    pub refused: HashSet<String>,
    /// Delay before answering stable_token.
    pub token_delay: Duration,
    /// Delay before answering a component API call (taken, and recorded, at once).
    pub component_delay: Duration,
    /// Sends answered by a gateway's error page (HTTP 502, HTML) before reaching WeChat: so
    /// many of the next ones, not taken.
    pub bad_gateway: u32,
    /// Sends being answered now, and the most there ever were at once (how many the workers
    /// had under way together).
    pub sends_in_flight: usize,
    pub max_sends_in_flight: usize,
    /// Sends asked for, answered or refused.
    pub send_attempts: usize,
    /// The access token of every accepted send, in order with `sends`.
    pub send_tokens: Vec<String>,
    /// Open Platform: authorization codes not used yet → the authorizer AppID.
    pub auth_codes: HashMap<String, String>,
    /// Every code `api_query_auth` was asked to exchange, used or not.
    pub code_exchanges: Vec<String>,
    /// Every `api_component_token` call's ticket.
    pub component_tickets: Vec<String>,
    /// Every `api_authorizer_token` call's authorizer AppID.
    pub authorizer_token_fetches: Vec<String>,
    /// Each authorizer's current refresh token.
    pub refresh_tokens: HashMap<String, String>,
    /// Each authorizer's gh_ id (`api_get_authorizer_info`); `gh_{appid}` by default.
    pub user_names: HashMap<String, String>,
    issued: u32,
}

#[derive(Debug, Clone)]
pub struct FakeWeChat {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeWeChat {
    pub async fn start() -> FakeWeChat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeWeChat { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sends(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().sends.clone()
    }

    pub fn sends_to(&self, openid: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .sends
            .iter()
            .filter(|(to, _)| to == openid)
            .count()
    }

    pub fn token_fetches(&self) -> Vec<bool> {
        self.state.lock().unwrap().token_fetches.clone()
    }

    /// The `appid` of every stable_token call so far.
    pub fn token_appids(&self) -> Vec<String> {
        self.state.lock().unwrap().token_appids.clone()
    }

    /// Makes every token issued so far expired.
    pub fn expire_tokens(&self) {
        let mut s = self.state.lock().unwrap();
        for n in 1..=s.issued {
            s.expired.insert(format!("TOKEN-{n}"));
        }
    }

    pub fn fail(&self, openid: &str, errcode: i64, times: u32) {
        self.state
            .lock()
            .unwrap()
            .failures
            .insert(openid.to_owned(), (errcode, times));
    }

    /// The most sends under way at once since the last call (which starts a new count).
    pub fn take_max_sends_in_flight(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let now = s.sends_in_flight;
        std::mem::replace(&mut s.max_sends_in_flight, now)
    }

    pub fn set_send_delay(&self, delay: Duration) {
        self.state.lock().unwrap().send_delay = delay;
    }

    pub fn set_token_delay(&self, delay: Duration) {
        self.state.lock().unwrap().token_delay = delay;
    }

    /// An authorization code for `authorizer`, good once.
    pub fn authorization_code(&self, code: &str, authorizer: &str) {
        self.state
            .lock()
            .unwrap()
            .auth_codes
            .insert(code.to_owned(), authorizer.to_owned());
    }

    /// The access token of every accepted send to `openid`.
    pub fn tokens_sent_to(&self, openid: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.sends
            .iter()
            .zip(&s.send_tokens)
            .filter(|((to, _), _)| to == openid)
            .map(|(_, token)| token.clone())
            .collect()
    }

    /// Makes sends refuse `token` (40001), though stable_token still hands it out unforced.
    pub fn refuse_token(&self, token: &str) {
        self.state.lock().unwrap().refused.insert(token.to_owned());
    }
}

async fn answer(
    state: Arc<Mutex<FakeState>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = match path.as_str() {
        "/cgi-bin/stable_token" => {
            let delay = state.lock().unwrap().token_delay;
            tokio::time::sleep(delay).await;
            let mut s = state.lock().unwrap();
            s.token_fetches
                .push(body["force_refresh"].as_bool().unwrap_or(false));
            s.token_appids
                .push(body["appid"].as_str().unwrap_or_default().to_owned());
            // Like WeChat's stable_token: the same token until it expires or a refresh is forced.
            let current = format!("TOKEN-{}", s.issued);
            if let Some(stuck) = s.stuck_token.clone() {
                s.expired.insert(stuck.clone());
                json!({"access_token": stuck, "expires_in": 7200})
            } else if s.issued > 0 && !s.expired.contains(&current) && body["force_refresh"] != true
            {
                json!({"access_token": current, "expires_in": 7200})
            } else {
                s.issued += 1;
                json!({"access_token": format!("TOKEN-{}", s.issued), "expires_in": 7200})
            }
        }
        "/cgi-bin/message/custom/send" if bad_gateway(&state) => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            )));
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(response);
        }
        "/cgi-bin/message/custom/send" => {
            // Like WeChat, it takes the message at once and may answer late (after a client
            // that gave up waiting is gone).
            let token = query
                .strip_prefix("access_token=")
                .unwrap_or_default()
                .to_owned();
            let to = body["touser"].as_str().unwrap_or_default().to_owned();
            let (reply, delay) = {
                let mut s = state.lock().unwrap();
                s.sends_in_flight += 1;
                s.send_attempts += 1;
                s.max_sends_in_flight = s.max_sends_in_flight.max(s.sends_in_flight);
                let reply = if s.expired.contains(&token) || !token.starts_with("TOKEN-") {
                    json!({"errcode": 42001, "errmsg": "access_token expired"})
                } else if s.refused.contains(&token) {
                    json!({"errcode": 40001, "errmsg": "invalid credential"})
                } else if let Some((errcode, times)) =
                    s.failures.get_mut(&to).filter(|(_, n)| *n > 0)
                {
                    *times = times.saturating_sub(u32::from(*times != u32::MAX));
                    json!({"errcode": *errcode, "errmsg": "injected"})
                } else {
                    let content = body["text"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    s.sends.push((to, content));
                    s.send_tokens.push(token.clone());
                    json!({"errcode": 0, "errmsg": "ok"})
                };
                (reply, s.send_delay)
            };
            // Counted out even when the client hangs up first (this future is dropped then).
            let _out = InFlight(&state);
            tokio::time::sleep(delay).await;
            reply
        }
        "/cgi-bin/component/api_component_token" => {
            let mut s = state.lock().unwrap();
            let ticket = body["component_verify_ticket"].as_str().unwrap_or_default();
            s.component_tickets.push(ticket.to_owned());
            if ticket.is_empty()
                || body["component_appsecret"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
            {
                json!({"errcode": 61006, "errmsg": "component ticket is invalid"})
            } else {
                s.issued += 1;
                json!({"component_access_token": format!("COMPONENT-{}", s.issued), "expires_in": 7200})
            }
        }
        path if path.starts_with("/cgi-bin/component/") => {
            let token = query
                .strip_prefix("component_access_token=")
                .unwrap_or_default();
            let (reply, delay) = {
                let mut s = state.lock().unwrap();
                let reply = if !token.starts_with("COMPONENT-") || s.expired.contains(token) {
                    json!({"errcode": 42001, "errmsg": "component_access_token expired"})
                } else {
                    component_api(&mut s, path, &body)
                };
                (reply, s.component_delay)
            };
            tokio::time::sleep(delay).await;
            reply
        }
        _ => json!({"errcode": 404, "errmsg": "no such API"}),
    };
    Ok(Response::new(Full::new(Bytes::from(reply.to_string()))))
}

/// An Open Platform API called with a valid component token.
fn component_api(s: &mut FakeState, path: &str, body: &Value) -> Value {
    let issue = |s: &mut FakeState, appid: &str| {
        s.issued += 1;
        let refresh = format!("refreshtoken@@@{appid}-{}", s.issued);
        s.refresh_tokens.insert(appid.to_owned(), refresh.clone());
        (format!("TOKEN-{appid}-{}", s.issued), refresh)
    };
    match path {
        "/cgi-bin/component/api_query_auth" => {
            let code = body["authorization_code"].as_str().unwrap_or_default();
            s.code_exchanges.push(code.to_owned());
            let Some(appid) = s.auth_codes.remove(code) else {
                return json!({"errcode": 61010, "errmsg": "code is expired or used"});
            };
            let (token, refresh) = issue(s, &appid);
            json!({"authorization_info": {
                "authorizer_appid": appid, "authorizer_access_token": token, "expires_in": 7200,
                "authorizer_refresh_token": refresh, "func_info": []}})
        }
        "/cgi-bin/component/api_authorizer_token" => {
            let appid = body["authorizer_appid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            s.authorizer_token_fetches.push(appid.clone());
            if s.refresh_tokens.get(&appid).map(String::as_str)
                != body["authorizer_refresh_token"].as_str()
            {
                return json!({"errcode": 61023, "errmsg": "refresh_token is invalid"});
            }
            let (token, refresh) = issue(s, &appid);
            json!({"authorizer_access_token": token, "expires_in": 7200, "authorizer_refresh_token": refresh})
        }
        "/cgi-bin/component/api_get_authorizer_info" => {
            let appid = body["authorizer_appid"].as_str().unwrap_or_default();
            let user_name = s
                .user_names
                .get(appid)
                .cloned()
                .unwrap_or_else(|| format!("gh_{appid}"));
            // Like WeChat's, with the authorizer's current refresh token once it has one.
            let mut info = json!({"authorizer_info": {"user_name": user_name, "nick_name": appid},
                   "authorization_info": {"authorizer_appid": appid}});
            if let Some(refresh) = s.refresh_tokens.get(appid) {
                info["authorization_info"]["authorizer_refresh_token"] = json!(refresh);
            }
            info
        }
        _ => json!({"errcode": 404, "errmsg": "no such API"}),
    }
}

/// A send being answered: counted out when its answer goes (or its client hangs up).
struct InFlight<'a>(&'a Mutex<FakeState>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.sends_in_flight -= 1;
        }
    }
}

/// Whether this send meets the gateway's error page (and counts it).
fn bad_gateway(state: &Mutex<FakeState>) -> bool {
    let mut s = state.lock().unwrap();
    if s.bad_gateway == 0 {
        return false;
    }
    s.bad_gateway -= 1;
    true
}
