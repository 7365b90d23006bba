//! Which API credentials speak for a record's account: its own, found by the record's
//! `account` (the push's `ToUserName`, which the ingress checked against the account whose
//! secrets verified the push), and never another account's.
//!
//! The accounts are the `WECHAT_*` one (when any of `WECHAT_APPID`, `WECHAT_APPSECRET` or
//! `WECHAT_ORIGINAL_ID` is set) and each `[accounts.NAME]` of `INGEST_ACCOUNTS`. With more than
//! one, each must name its `original_id`, as the ingress requires.

use std::collections::HashMap;

use ops::settings::Shared;
use wechat::accounts::{check_original_ids, Secret};

use crate::api::Credentials;

/// The credentials of every configured account.
#[derive(Debug)]
pub enum Senders {
    /// One account without an `original_id`: its credentials, if it has them, speak for
    /// every record (the ingress takes any `ToUserName` for it too).
    Only(Option<Credentials>),
    /// By `original_id`; `None` for an account configured without an AppID and AppSecret,
    /// whose welcomes are logged, not sent.
    ById(HashMap<String, Option<Credentials>>),
}

/// Why a record's welcome cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSender {
    /// Its account is configured without an AppID and AppSecret.
    NoSecret,
    /// No configured account has its `original_id`.
    Unknown,
}

/// The name of the `WECHAT_*` account (not a valid table name: no clash with one).
const WECHAT_ACCOUNT: &str = "default (WECHAT_*)";

/// An account as the workers see it: (name, original_id, credentials).
type Entry = (String, Option<String>, Option<Credentials>);

fn credentials(appid: Option<String>, appsecret: Option<Secret>) -> Option<Credentials> {
    match (appid, appsecret) {
        (Some(appid), Some(appsecret)) if !appid.is_empty() && !appsecret.expose().is_empty() => {
            Some(Credentials::account(appid, appsecret))
        }
        _ => None,
    }
}

impl Senders {
    /// The accounts the shared settings name; an error (a start refused) when several lack
    /// an `original_id` or share one.
    pub fn load(shared: &Shared) -> Result<Senders, String> {
        let mut entries: Vec<Entry> = Vec::new();
        let original_id = shared.original_id.clone().filter(|id| !id.is_empty());
        if shared.appid.is_some() || shared.appsecret.is_some() || original_id.is_some() {
            entries.push((
                WECHAT_ACCOUNT.into(),
                original_id,
                credentials(shared.appid.clone(), shared.appsecret.clone()),
            ));
        }
        if let Some(file) = shared.accounts()? {
            for (name, entry) in file.accounts {
                entries.push((
                    name,
                    entry.original_id.filter(|id| !id.is_empty()),
                    credentials(entry.appid, entry.appsecret),
                ));
            }
        }
        check_original_ids(
            entries.iter().map(|(name, id, _)| {
                let setting = if name == WECHAT_ACCOUNT {
                    "WECHAT_ORIGINAL_ID"
                } else {
                    "original_id in its [accounts.NAME] table"
                };
                (name.as_str(), id.as_deref(), setting)
            }),
            shared.component()?.is_some(),
        )?;
        for (name, _, creds) in &entries {
            if creds.is_none() {
                tracing::info!(account = %name, "no AppID and AppSecret: its welcome messages are logged, not sent");
            }
        }
        Ok(match entries.as_mut_slice() {
            [] => Senders::Only(None),
            [(_, None, creds)] => Senders::Only(creds.take()),
            _ => Senders::ById(
                entries
                    .into_iter()
                    .filter_map(|(_, id, creds)| Some((id?, creds)))
                    .collect(),
            ),
        })
    }

    /// The credentials for a record of `account`: its own, or why there are none.
    pub fn for_account(&self, account: &str) -> Result<&Credentials, NoSender> {
        match self {
            Senders::Only(creds) => creds.as_ref().ok_or(NoSender::NoSecret),
            Senders::ById(by_id) => match by_id.get(account) {
                Some(creds) => creds.as_ref().ok_or(NoSender::NoSecret),
                None => Err(NoSender::Unknown),
            },
        }
    }

    /// Whether any account can send.
    pub fn any(&self) -> bool {
        match self {
            Senders::Only(creds) => creds.is_some(),
            Senders::ById(by_id) => by_id.values().any(Option::is_some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn shared(args: &[&str], accounts: Option<&str>) -> Shared {
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            shared: Shared,
        }
        let mut shared =
            Args::parse_from(std::iter::once("worker").chain(args.iter().copied())).shared;
        if let Some(toml) = accounts {
            static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let file = std::env::temp_dir().join(format!(
                "wxpipe-senders-{}-{}.toml",
                std::process::id(),
                FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::write(&file, toml).unwrap();
            shared.accounts_file = Some(file);
        }
        shared
    }

    #[test]
    fn one_account_without_an_id_speaks_for_every_record() {
        let senders =
            Senders::load(&shared(&["--appid", "wxa", "--appsecret", "s"], None)).unwrap();
        assert_eq!(senders.for_account("gh_anything").unwrap().appid, "wxa");
        let senders = Senders::load(&shared(&[], None)).unwrap();
        assert_eq!(senders.for_account("gh_x").unwrap_err(), NoSender::NoSecret);
        assert!(!senders.any());
    }

    /// Account `gh_a` with its own credentials, given on the command line.
    const ACCOUNT_A: &[&str] = &[
        "--appid",
        "wxa",
        "--appsecret",
        "s",
        "--original-id",
        "gh_a",
    ];

    #[test]
    fn an_account_never_borrows_another_accounts_credentials() {
        let senders = Senders::load(&shared(
            ACCOUNT_A,
            Some("[accounts.b]\ntoken = \"t\"\nappid = \"wxb\"\noriginal_id = \"gh_b\"\n"),
        ))
        .unwrap();
        assert_eq!(senders.for_account("gh_a").unwrap().appid, "wxa");
        assert_eq!(senders.for_account("gh_b").unwrap_err(), NoSender::NoSecret);
        assert_eq!(senders.for_account("gh_c").unwrap_err(), NoSender::Unknown);
        // One named account alone: only its own records.
        let senders = Senders::load(&shared(ACCOUNT_A, None)).unwrap();
        assert_eq!(senders.for_account("gh_b").unwrap_err(), NoSender::Unknown);
    }

    /// Red team: a table whose name starts with `default` is not the `WECHAT_*` account: the
    /// error must name its own setting (it named WECHAT_ORIGINAL_ID).
    #[test]
    fn a_table_named_default_something_is_told_its_own_setting() {
        let error = Senders::load(&shared(
            &["--original-id", "gh_a"],
            Some("[accounts.default_eu]\ntoken = \"t\"\n"),
        ))
        .unwrap_err();
        assert!(
            error.contains("default_eu") && error.contains("[accounts.NAME]"),
            "{error}"
        );
    }

    #[test]
    fn several_accounts_without_their_ids_refuse_the_start() {
        let error = Senders::load(&shared(
            &["--appid", "wxa", "--appsecret", "s"],
            Some("[accounts.b]\ntoken = \"t\"\noriginal_id = \"gh_b\"\n"),
        ))
        .unwrap_err();
        assert!(error.contains("WECHAT_ORIGINAL_ID"), "{error}");
    }
}
