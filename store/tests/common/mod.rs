//! What the store suites share: the Redis deployments each suite also runs on.

/// Two tests, `cluster_engine` and `sentinel_engine`, that run `$suite(url)` on a six-node
/// Redis Cluster and on a Sentinel set.
#[macro_export]
macro_rules! on_every_deployment {
    ($suite:ident) => {
        #[tokio::test]
        async fn cluster_engine() {
            let cluster = testkit::RedisCluster::start();
            $suite(&cluster.url()).await;
        }

        #[tokio::test]
        async fn sentinel_engine() {
            let sentinel = testkit::RedisSentinel::start();
            $suite(&sentinel.url()).await;
        }
    };
}
