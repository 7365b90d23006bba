//! Accounts whose records are held: an account the WeChat API refuses for now (a wrong
//! AppSecret, an API not authorised) holds its own records, never the whole role. Its records
//! wait in flight (their offsets are not stored, so nothing is committed past them) while the
//! role reads on and other accounts' records move on; one of them probes the API at a time,
//! with a growing pause, and when a probe passes every held record of that account goes on.
//!
//! A held record (one the API refused, or one that found its account held before it tried)
//! gives its concurrency permit back while it waits, so held records never fill the role, and
//! takes one again before it tries (but the probe, one per held account), so they never try
//! more at once than the role's concurrency. Past
//! [`AccountHolds::capacity`] held records the role keeps their permits, and so stops reading
//! when they fill it, as it does for an outage: memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pause before a held account's probe `n` (1-based): from 1 s, doubling, at most a minute.
fn probe_pause(probes: u32) -> Duration {
    Duration::from_secs(1u64 << probes.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// The held accounts of one role.
#[derive(Debug)]
pub struct AccountHolds {
    role: &'static str,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<String, Hold>,
    /// Held records of every account.
    records: usize,
}

#[derive(Debug)]
struct Hold {
    records: usize,
    /// When the next probe may go.
    probe_at: Instant,
    probes: u32,
    /// A probe is under way: no other record of the account tries meanwhile.
    probing: bool,
    /// The last probe passed: every record of the account goes on.
    open: bool,
    reason: String,
}

/// What a record of an account may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Go: the account is not held, or its hold is open.
    Go,
    /// Go as the held account's probe: the only record of it trying now.
    Probe,
    /// Wait, and ask again at the latest at this instant.
    WaitUntil(Instant),
}

/// How a record's try went, as far as its account is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried<'r> {
    /// The API refused the account (the reason).
    Refused(&'r str),
    /// The account was not refused: its held records may go on.
    Passed,
    /// Nothing learnt of the account (an outage, an unexplained failure): a probe that
    /// meets one has not passed, and the next probe waits its pause.
    Unsettled,
}

impl AccountHolds {
    pub fn new(role: &'static str, capacity: usize) -> Self {
        AccountHolds {
            role,
            capacity,
            state: Mutex::default(),
        }
    }

    /// Held records past which a held record keeps its permit.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("holds lock")
    }

    /// Whether a record of `account` may try its effect now. A record that goes while the
    /// account is held may be its probe: every record that went reports how its try went,
    /// with [`AccountHolds::tried`].
    pub fn turn(&self, account: &str) -> Turn {
        let mut state = self.lock();
        let Some(hold) = state.accounts.get_mut(account) else {
            return Turn::Go;
        };
        if hold.open {
            return Turn::Go;
        }
        let now = Instant::now();
        if hold.probing || now < hold.probe_at {
            // Look again soon: the probe may pass before the next one is due.
            let soon = now + Duration::from_millis(250);
            return Turn::WaitUntil(if hold.probing {
                soon
            } else {
                hold.probe_at.min(soon)
            });
        }
        hold.probing = true;
        Turn::Probe
    }

    /// A record of `account` that the API refused joins the held ones (once; it then reports
    /// its try as refused); true when it may give its permit back.
    pub fn enter(&self, account: &str, reason: &str) -> bool {
        let mut state = self.lock();
        let give_back = state.records < self.capacity;
        state.records += 1;
        let hold = state.accounts.entry(account.to_owned()).or_insert_with(|| {
            tracing::error!(role = self.role, account, %reason,
                "the WeChat API refuses this account: its records are held (the rest move on) until a person fixes its AppID, AppSecret or API permissions");
            Hold {
                records: 0,
                probe_at: Instant::now(),
                probes: 0,
                probing: false,
                open: false,
                reason: String::new(),
            }
        });
        hold.records += 1;
        reason.clone_into(&mut hold.reason);
        let held = hold.records;
        drop(state);
        self.gauge(account, held);
        give_back
    }

    /// A record that found `account` held before it tried joins its held records (it waits
    /// for the probe as they do); true when it may give its permit back. `None`: the account
    /// is no longer held.
    pub fn join(&self, account: &str) -> Option<bool> {
        let mut state = self.lock();
        let give_back = state.records < self.capacity;
        let hold = state.accounts.get_mut(account)?;
        hold.records += 1;
        let held = hold.records;
        state.records += 1;
        drop(state);
        self.gauge(account, held);
        Some(give_back)
    }

    /// How a record's try went (`probe`: it went as the account's probe). A refused probe
    /// makes the next one wait longer; records refused together before the account was held
    /// count as one refusal, not one each; a pass lets every held record of the account go
    /// on. A no-op for an account that is not held.
    pub fn tried(&self, account: &str, probe: bool, tried: Tried<'_>) {
        let mut state = self.lock();
        let Some(hold) = state.accounts.get_mut(account) else {
            return;
        };
        if probe {
            hold.probing = false;
        }
        let now = Instant::now();
        match tried {
            Tried::Refused(reason) => {
                reason.clone_into(&mut hold.reason);
                if probe || hold.open || hold.probes == 0 {
                    hold.open = false;
                    hold.probes += 1;
                    hold.probe_at = now + probe_pause(hold.probes);
                }
            }
            Tried::Passed => hold.open = true,
            Tried::Unsettled if probe => hold.probe_at = now + probe_pause(hold.probes.max(1)),
            Tried::Unsettled => {}
        }
    }

    /// A held record of `account` is done with (or stops): it leaves the count, and the hold
    /// ends with its last record.
    pub fn leave(&self, account: &str) {
        let mut state = self.lock();
        state.records = state.records.saturating_sub(1);
        let held = match state.accounts.get_mut(account) {
            Some(hold) => {
                hold.records -= 1;
                hold.records
            }
            None => return,
        };
        if held == 0 {
            state.accounts.remove(account);
            tracing::info!(
                role = self.role,
                account,
                "the account's held records moved on"
            );
        }
        drop(state);
        self.gauge(account, held);
    }

    /// Held records of `account` (for the tests and the metric).
    pub fn held(&self, account: &str) -> usize {
        self.lock().accounts.get(account).map_or(0, |h| h.records)
    }

    fn gauge(&self, account: &str, held: usize) {
        metrics::gauge!("wxpipe_worker_held_records", "role" => self.role, "account" => account.to_owned())
            .set(held as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_at_a_time_and_the_rest_wait() {
        let holds = AccountHolds::new("welcome", 10);
        assert_eq!(holds.turn("gh_a"), Turn::Go, "not held");
        holds.tried("gh_a", false, Tried::Passed);
        assert!(holds.enter("gh_a", "48001"));
        holds.tried("gh_a", false, Tried::Refused("48001"));
        assert!(holds.enter("gh_a", "48001"));
        holds.tried("gh_a", false, Tried::Refused("48001"));
        assert_eq!(holds.held("gh_a"), 2);
        assert!(
            matches!(holds.turn("gh_a"), Turn::WaitUntil(_)),
            "the next probe waits its pause"
        );
        assert_eq!(holds.turn("gh_b"), Turn::Go, "another account goes on");
        // Due: one probe goes, the others wait for it.
        holds.lock().accounts.get_mut("gh_a").unwrap().probe_at = Instant::now();
        assert_eq!(holds.turn("gh_a"), Turn::Probe);
        assert!(matches!(holds.turn("gh_a"), Turn::WaitUntil(_)));
        holds.tried("gh_a", true, Tried::Refused("48001 again"));
        assert!(
            matches!(holds.turn("gh_a"), Turn::WaitUntil(_)),
            "a longer pause"
        );
        holds.lock().accounts.get_mut("gh_a").unwrap().probe_at = Instant::now();
        assert_eq!(holds.turn("gh_a"), Turn::Probe);
        holds.tried("gh_a", true, Tried::Passed);
        assert_eq!(holds.turn("gh_a"), Turn::Go, "every held record goes on");
        assert_eq!(holds.turn("gh_a"), Turn::Go);
        holds.leave("gh_a");
        holds.leave("gh_a");
        assert_eq!(holds.held("gh_a"), 0);
        assert!(holds.lock().accounts.is_empty());
    }

    #[test]
    fn past_its_capacity_a_held_record_keeps_its_permit() {
        let holds = AccountHolds::new("welcome", 2);
        assert!(holds.enter("gh_a", "x"));
        assert!(holds.enter("gh_b", "x"));
        assert!(!holds.enter("gh_a", "x"));
        holds.leave("gh_a");
        assert!(!holds.enter("gh_b", "x"), "two held still");
        holds.leave("gh_a");
        holds.leave("gh_b");
        assert!(holds.enter("gh_b", "x"));
    }

    #[test]
    fn a_record_that_finds_its_account_held_joins_the_count() {
        let holds = AccountHolds::new("welcome", 2);
        assert_eq!(holds.join("gh_a"), None, "not held: nothing to join");
        assert!(holds.enter("gh_a", "48001"));
        assert_eq!(holds.join("gh_a"), Some(true));
        assert_eq!(holds.held("gh_a"), 2);
        assert_eq!(holds.join("gh_a"), Some(false), "past the cap");
        for _ in 0..3 {
            holds.leave("gh_a");
        }
        assert_eq!(holds.held("gh_a"), 0);
        assert!(holds.lock().accounts.is_empty());
        assert_eq!(holds.lock().records, 0);
    }

    /// Red team: the pause grows with each probe, not with each record: eight records tried
    /// together before the account was held (none of them a probe) and all refused made the
    /// first probe wait a minute (the pause of probe 8), not a second.
    #[test]
    fn records_refused_together_make_one_pause_not_eight() {
        let holds = AccountHolds::new("welcome", 64);
        for _ in 0..8 {
            assert_eq!(holds.turn("gh_a"), Turn::Go, "not held yet");
        }
        for _ in 0..8 {
            holds.enter("gh_a", "48001");
            holds.tried("gh_a", false, Tried::Refused("48001"));
        }
        let due = holds.lock().accounts["gh_a"].probe_at;
        assert!(
            due <= Instant::now() + Duration::from_secs(1),
            "the first probe is due in {:?}",
            due - Instant::now()
        );
    }

    /// Red team: a probe that meets an outage has not passed: the hold stays closed, and the
    /// next probe waits its pause.
    #[test]
    fn a_probe_that_meets_an_outage_has_not_passed() {
        let holds = AccountHolds::new("welcome", 64);
        holds.enter("gh_a", "48001");
        holds.tried("gh_a", false, Tried::Refused("48001"));
        holds.lock().accounts.get_mut("gh_a").unwrap().probe_at = Instant::now();
        assert_eq!(holds.turn("gh_a"), Turn::Probe);
        holds.tried("gh_a", true, Tried::Unsettled);
        assert!(matches!(holds.turn("gh_a"), Turn::WaitUntil(_)));
        holds.lock().accounts.get_mut("gh_a").unwrap().probe_at = Instant::now();
        assert_eq!(holds.turn("gh_a"), Turn::Probe, "a probe again, when due");
    }

    #[test]
    fn probe_pauses_grow_to_a_minute() {
        assert_eq!(probe_pause(1), Duration::from_secs(1));
        assert_eq!(probe_pause(2), Duration::from_secs(2));
        assert_eq!(probe_pause(30), Duration::from_secs(60));
    }
}
