//! An example program run as a child process, for tests that kill it or watch its memory: built
//! by cargo in the test's own profile, its output lines collected, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use events::Event;
use serde::{Deserialize, Serialize};

/// The worker example's event, declared here as another service would: the name and the fields
/// are the contract.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: String,
    pub(crate) total: f64,
}

/// A running example.
#[derive(Debug)]
pub(crate) struct ExampleProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ExampleProcess {
    /// Builds example `name` of the `events` package and starts it with `env` added to this
    /// process's environment.
    pub(crate) fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(example_binary(name))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("could not start example {name}: {error}"));
        let lines = Arc::<Mutex<Vec<String>>>::default();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }
        });
        Self { child, lines }
    }

    /// The process id, to read its memory in `/proc` or signal it.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The lines it printed since the last call.
    pub(crate) fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    /// Fails the test if it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("check the example") {
            panic!("the example exited with {status}");
        }
    }

    /// Sends `signal` (such as `KILL` or `TERM`) with the `kill` command.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits until it exits and says whether it exited successfully.
    pub(crate) fn wait(&mut self) -> bool {
        self.child.wait().expect("wait for the example").success()
    }
}

impl Drop for ExampleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds example `name` with the cargo that builds the tests, in the same profile, and gives
/// the path of its executable. It asks for the README's test command (`cargo test --workspace`,
/// not run): during that command everything is already built with the same features, where
/// building the one example would resolve features apart and compile the library again.
fn example_binary(name: &str) -> PathBuf {
    let mut command = Command::new(env!("CARGO"));
    // Cargo gives this test process its package's name, directory and the like; ring's build
    // script records some of them, so a cargo that inherited them would build ring (and all above
    // it) again, here and in the next cargo command after the tests.
    for (name, _) in std::env::vars_os() {
        let set_for_tests = name.to_str().is_some_and(|name| {
            ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name)
        });
        if set_for_tests {
            command.env_remove(name);
        }
    }
    command.args([
        "test",
        "--workspace",
        "--no-run",
        "--quiet",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(output.status.success(), "building example {name} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["target"]["name"] == name && message["target"]["kind"][0] == "example"
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo named no executable for example {name}"))
}
