//! Redis as large deployments run it, on loopback: a Redis Cluster of three masters with a
//! replica each, and a Sentinel set (a primary, a replica, three sentinels). Every process is
//! killed on drop; a test may SIGKILL a master to see a failover.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::names::{free_port, unique};

/// A loopback port below 55536 whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55536 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A scratch directory for the processes' files (nodes.conf, the sentinels' configs),
/// removed on drop: a set holds it after its nodes, so they are gone first.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("wxpipe-redis-"));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` on loopback `port`, without persistence, with `extra` arguments.
pub(crate) fn server_args(port: u16, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    let base = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    base.iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect()
}

/// `host:port,host:port,…` of `nodes`.
fn addresses(nodes: &[Node]) -> String {
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    addresses.join(",")
}

/// One `redis-server` process with `args`, killed on drop.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    pub port: u16,
}

impl Node {
    fn spawn(port: u16, dir: &std::path::Path, args: &[String]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let node = Node {
            child: Some(child),
            port,
        };
        node.wait_for(|reply| reply.is_some(), "PING", &[]);
        node
    }

    /// Polls a command until `ok` accepts its reply (`None`: no answer).
    fn wait_for(&self, ok: impl Fn(Option<String>) -> bool, cmd: &str, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok(self.query(cmd, args)) {
            assert!(
                Instant::now() < deadline,
                "redis on port {}: {cmd} did not get there",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command's reply, `None` when the node does not answer (or refuses the command).
    pub fn query_as<T: redis::FromRedisValue>(&self, cmd: &str, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd(cmd).arg(args).query(&mut conn).ok()
    }

    /// A command's reply as text.
    pub fn query(&self, cmd: &str, args: &[&str]) -> Option<String> {
        self.query_as(cmd, args)
    }

    /// SIGKILL: the node is gone without a word, as when its machine dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One cluster node that owns every slot, reached as a single server: it answers each
/// single-slot command as one server does, and refuses a script whose keys span slots
/// (`CROSSSLOT`), as a proxy that shards by slot does behind a `redis://` URL.
#[derive(Debug)]
pub struct SlotCheckingRedis {
    pub node: Node,
    _dir: Scratch,
}

impl SlotCheckingRedis {
    pub fn start() -> SlotCheckingRedis {
        let dir = Scratch::new();
        let port = cluster_port();
        let config = format!("nodes-{port}.conf");
        let args = server_args(
            port,
            &["--cluster-enabled", "yes", "--cluster-config-file", &config],
        );
        let node = Node::spawn(port, &dir, &args);
        node.wait_for(
            |reply| reply.is_some(),
            "CLUSTER",
            &["ADDSLOTSRANGE", "0", "16383"],
        );
        node.wait_for(
            |info| info.is_some_and(|i| i.contains("cluster_state:ok")),
            "CLUSTER",
            &["INFO"],
        );
        SlotCheckingRedis { node, _dir: dir }
    }

    /// `redis://`: a single server, as far as the client knows.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.node.port)
    }
}

/// Three masters and three replicas joined by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dir: Scratch,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = Scratch::new();
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                let port = cluster_port();
                let config = format!("nodes-{port}.conf");
                let args = server_args(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config,
                        "--cluster-node-timeout",
                        "1000",
                        // A replica takes over however long its master has been gone.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                );
                Node::spawn(port, &dir, &args)
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let status = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed (Debian's redis-tools, with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            node.wait_for(
                |info| info.is_some_and(|i| i.contains("cluster_state:ok")),
                "CLUSTER",
                &["INFO"],
            );
            // Each replica has its master's data, so it can take over.
            node.wait_for(
                |info| {
                    info.is_some_and(|i| {
                        i.contains("role:master") || i.contains("master_link_status:up")
                    })
                },
                "INFO",
                &["replication"],
            );
        }
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", addresses(&self.nodes))
    }

    /// The node that is master of `key`'s slot now.
    pub fn master_of(&mut self, key: &str) -> &mut Node {
        let (slot, masters) = self
            .nodes
            .iter()
            .find_map(|node| {
                let slot: u16 = node.query_as("CLUSTER", &["KEYSLOT", key])?;
                Some((slot, node.query("CLUSTER", &["NODES"])?))
            })
            .expect("a live node answers");
        let port = masters
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .filter(|f| f.len() >= 9 && f[2].contains("master") && !f[2].contains("fail"))
            .find(|f| {
                f[8..].iter().any(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    matches!((start.parse::<u16>(), end.parse::<u16>()),
                        (Ok(start), Ok(end)) if (start..=end).contains(&slot))
                })
            })
            .and_then(|f| f[1].split([':', '@']).nth(1)?.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no live master holds slot {slot}"));
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap()
    }

    /// Whether every live node reports `cluster_state:ok`.
    pub fn healthy(&self) -> bool {
        self.nodes
            .iter()
            .filter_map(|node| node.query("CLUSTER", &["INFO"]))
            .all(|info| info.contains("cluster_state:ok"))
    }
}

/// A primary, its replica and three sentinels watching them as `wxpipe`.
#[derive(Debug)]
pub struct RedisSentinel {
    pub primary: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: Scratch,
}

impl RedisSentinel {
    pub const MASTER: &'static str = "wxpipe";

    pub fn start() -> RedisSentinel {
        let dir = Scratch::new();
        let server = |port: u16, extra: &[&str]| Node::spawn(port, &dir, &server_args(port, extra));
        let primary = server(free_port(), &[]);
        let replica = server(
            free_port(),
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        );
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let config = dir.join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "port {port}\nbind 127.0.0.1\n\
                         sentinel monitor {m} 127.0.0.1 {p} 2\n\
                         sentinel down-after-milliseconds {m} 1000\n\
                         sentinel failover-timeout {m} 5000\n\
                         sentinel parallel-syncs {m} 1\n",
                        m = Self::MASTER,
                        p = primary.port
                    ),
                )
                .unwrap();
                Node::spawn(
                    port,
                    &dir,
                    &[config.display().to_string(), "--sentinel".to_owned()],
                )
            })
            .collect();
        let set = RedisSentinel {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        set.replica.wait_for(
            |info| info.is_some_and(|i| i.contains("master_link_status:up")),
            "INFO",
            &["replication"],
        );
        for sentinel in &set.sentinels {
            sentinel.wait_for(
                |info| info.is_some_and(|i| i.contains("sentinels=3") && i.contains("status=ok")),
                "INFO",
                &["sentinel"],
            );
        }
        set
    }

    /// `redis+sentinel://` with every sentinel.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{}",
            addresses(&self.sentinels),
            Self::MASTER
        )
    }

    /// The port the sentinels name as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let (_, port): (String, u16) =
                sentinel.query_as("SENTINEL", &["get-master-addr-by-name", Self::MASTER])?;
            Some(port)
        })
    }

    /// Whether the sentinels name a primary now, and not the one on port `old`: a failover
    /// from it is done.
    pub fn promoted_from(&self, old: u16) -> bool {
        self.primary_port().is_some_and(|port| port != old)
    }
}
