//! The tenant boundary in the workers: an account's credentials speak for that account's
//! records only, and one account's trouble holds that account's records only.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// An accounts file in a fresh temporary folder.
fn accounts_file(toml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("wxpipe-worker-accounts-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("accounts.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Account b is configured without an AppSecret: its followers' welcomes are logged, and are
/// never sent with the `WECHAT_*` account's credentials (which once stood in for any account
/// without its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_an_appsecret_never_sends_with_another_accounts_credentials() {
    let env = Env::start().await;
    let accounts =
        accounts_file("[accounts.b]\ntoken = \"t\"\nappid = \"wxb\"\noriginal_id = \"gh_b\"\n");
    env.produce(
        "subscribe",
        &[
            subscribe("gh_b", "fan_of_b", 1000, None),
            subscribe("gh_a", "fan_of_a", 1001, None),
        ],
    );
    let mut worker = KillOnDrop(
        env.command()
            .env("RUST_LOG", "warn")
            .env("WECHAT_ORIGINAL_ID", "gh_a")
            .env("INGEST_ACCOUNTS", &accounts)
            .args(["--role", "welcome"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_within(WAIT, "a's welcome", || env.wechat.sends_to("fan_of_a") == 1).await;
    // b's record was handled before or after a's; give it time to do what it would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.wechat.sends_to("fan_of_b"),
        0,
        "b's follower was sent a welcome with a's credentials"
    );
    assert!(
        env.wechat
            .token_appids()
            .iter()
            .all(|appid| appid == "wxtest"),
        "{:?}",
        env.wechat.token_appids()
    );
    let _ = worker.0.kill();
}

/// With two accounts, the `WECHAT_*` one must name its `original_id`: otherwise the start is
/// refused (exit 2), naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_without_their_original_ids_refuse_the_start() {
    let env = Env::start().await;
    let accounts =
        accounts_file("[accounts.b]\ntoken = \"t\"\nappid = \"wxb\"\noriginal_id = \"gh_b\"\n");
    let output = testkit::output_within(
        env.command()
            .env("RUST_LOG", "warn")
            .env("INGEST_ACCOUNTS", &accounts)
            .args(["--role", "welcome"]),
        Duration::from_secs(60),
    )
    .await
    .expect("the worker refuses to start, and exits");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WECHAT_ORIGINAL_ID"), "{stderr}");
}
