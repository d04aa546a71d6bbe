//! A throwaway 3-node Redis Cluster for tests: `redis-server --cluster-enabled yes` on free ports,
//! joined with `redis-cli --cluster create`, all stopped when dropped. Needs `redis-cli` on `PATH`.

use std::process::{Command, Stdio};

use super::redis_server::{RedisServer, free_port, redis_command};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Three masters owning all 16,384 slots between them.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The TLS port of each node, when they listen for TLS too.
    tls_ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts the nodes and joins them; panics with the reason when that fails.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// Starts three nodes, each with the arguments `extra` gives for a free port of its own,
    /// meant for TLS (`--tls-port`): when it gives any, [`tls_url`](Self::tls_url) names those
    /// ports. A node whose ports were taken meanwhile starts again on others.
    pub fn start_with(extra: impl Fn(u16) -> Vec<String>) -> Self {
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..3 {
            let mut node_tls_port = None;
            let node = RedisServer::spawn_command(|port, dir| {
                let tls_port = free_port().expect("a free port");
                let extra = extra(tls_port);
                node_tls_port = (!extra.is_empty()).then_some(tls_port);
                let mut command = redis_command(port, dir);
                command
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    // Not port + 10000, which may be past 65535.
                    .args([
                        "--cluster-port",
                        &free_port().expect("a free port").to_string(),
                    ])
                    .args(extra);
                (command, None)
            })
            .unwrap_or_else(|error| panic!("could not start a cluster node: {error}"));
            nodes.push(node);
            tls_ports.extend(node_tls_port);
        }
        let cluster = Self { nodes, tls_ports };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .spawn()
            .expect("run redis-cli --cluster create");
        // Nodes that cannot reach each other (a TLS bus with unsuitable certificates) would keep
        // it waiting for them to join forever.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = create.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                panic!("the nodes did not join a cluster within 30 s");
            }
            sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "redis-cli --cluster create failed: {status}"
        );
        cluster.wait_until_ok();
        cluster
    }

    /// `redis+cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The `rediss+cluster://` URL of its nodes' TLS ports.
    pub fn tls_url(&self) -> String {
        let nodes: Vec<String> = self
            .tls_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("{}{}", crate::TLS_CLUSTER_SCHEME, nodes.join(","))
    }

    /// Waits until every node reports the cluster as ok.
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            let port = node.port();
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                sleep(Duration::from_millis(50));
            }
        }
    }
}

impl RedisCluster {
    /// Moves the slot of `key`, with every key in it, to another node, as `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE in rounds, then the new owner announced.
    pub fn migrate_slot_of(&self, key: &str) {
        let cli = |port: u16, args: &[&str]| -> String {
            let output = Command::new("redis-cli")
                .arg("-p")
                .arg(port.to_string())
                .args(args)
                .output()
                .expect("run redis-cli");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        let slot = cli(ports[0], &["cluster", "keyslot", key]);
        let id = |port: u16| cli(port, &["cluster", "myid"]);
        let owner = *ports
            .iter()
            .find(|port| {
                cli(**port, &["cluster", "countkeysinslot", &slot]) != "0"
                    || cli(**port, &["cluster", "nodes"])
                        .lines()
                        .any(|line| line.contains("myself") && slot_in(line, &slot))
            })
            .expect("a node owns the slot");
        let target = *ports
            .iter()
            .find(|port| **port != owner)
            .expect("another node");
        let (owner_id, target_id) = (id(owner), id(target));
        cli(
            target,
            &["cluster", "setslot", &slot, "importing", &owner_id],
        );
        cli(
            owner,
            &["cluster", "setslot", &slot, "migrating", &target_id],
        );
        loop {
            let keys = cli(owner, &["cluster", "getkeysinslot", &slot, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let target_port = target.to_string();
            args.extend([target_port.as_str(), "", "0", "5000", "KEYS"]);
            args.extend(keys.lines());
            cli(owner, &args);
        }
        for port in &ports {
            cli(*port, &["cluster", "setslot", &slot, "node", &target_id]);
        }
        assert_eq!(
            cli(owner, &["cluster", "countkeysinslot", &slot]),
            "0",
            "the old owner kept keys"
        );
        assert_ne!(
            cli(target, &["cluster", "countkeysinslot", &slot]),
            "0",
            "the new owner got no keys"
        );
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn slot_in(line: &str, slot: &str) -> bool {
    let slot: u16 = slot.parse().unwrap_or(u16::MAX);
    line.split_whitespace().skip(8).any(|range| {
        let mut bounds = range
            .split('-')
            .filter_map(|bound| bound.parse::<u16>().ok());
        match (bounds.next(), bounds.next()) {
            (Some(first), Some(last)) => (first..=last).contains(&slot),
            (Some(only), None) => only == slot,
            _ => false,
        }
    })
}

impl RedisCluster {
    /// Closes every client connection of every node, as a network blip would.
    pub fn drop_client_connections(&self) {
        for node in &self.nodes {
            let port = node.port();
            let _ = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "client", "kill", "type", "normal"])
                .output();
        }
    }
}
